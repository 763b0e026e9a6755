"""SessionActivity moves to ``apps.batch`` (its writer is the batch activity subscriber).

State only: the table ``eventbus_sessionactivity`` stays as it is; batch's
0003 takes the model over under the same ``db_table``.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("eventbus", "0002_outbox_notify_trigger")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="SessionActivity")],
            database_operations=[],
        ),
    ]
