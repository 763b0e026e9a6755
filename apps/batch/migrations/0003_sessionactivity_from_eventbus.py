"""SessionActivity, taken over from ``apps.eventbus`` (see eventbus 0003).

State only: the table ``eventbus_sessionactivity`` already exists and keeps
its name, rows and columns.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("batch", "0002_default_beat_schedule"),
        ("eventbus", "0003_move_sessionactivity_to_batch"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="SessionActivity",
                    fields=[
                        ("session_id", models.UUIDField(primary_key=True, serialize=False)),
                        ("events_by_type", models.JSONField(default=dict)),
                        ("events_total", models.BigIntegerField(default=0)),
                        ("participants_joined", models.IntegerField(default=0)),
                        ("participants_left", models.IntegerField(default=0)),
                        ("suggestions_generated", models.IntegerField(default=0)),
                        ("suggestions_accepted", models.IntegerField(default=0)),
                        ("suggestions_rejected", models.IntegerField(default=0)),
                        ("first_event_at", models.DateTimeField(blank=True, null=True)),
                        ("last_event_at", models.DateTimeField(blank=True, null=True)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                    ],
                    options={"verbose_name_plural": "session activity", "db_table": "eventbus_sessionactivity"},
                ),
            ],
            database_operations=[],
        ),
    ]
