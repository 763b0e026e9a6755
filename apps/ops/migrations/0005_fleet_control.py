"""Fleet control: paused queues, the audit of fleet actions, and ``ops.change_fleet`` for the operators group."""

import uuid

import django.db.models.deletion
from django.conf import settings
from django.contrib.auth.management import create_permissions
from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps


def fleet_control_grant(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    ops_config = apps.get_app_config("ops")
    ops_config.models_module = True  # see 0003: create_permissions skips historical app configs without it
    create_permissions(ops_config, apps=apps, verbosity=0, using=schema_editor.connection.alias)
    ops_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.using(schema_editor.connection.alias).get_or_create(name=settings.OPS_OPERATORS_GROUP)
    group.permissions.add(Permission.objects.get(content_type__app_label="ops", codename="change_fleet"))


def fleet_control_revoke(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group = Group.objects.using(schema_editor.connection.alias).filter(name=settings.OPS_OPERATORS_GROUP).first()
    if group is not None:
        group.permissions.remove(*Permission.objects.filter(content_type__app_label="ops", codename="change_fleet"))


class Migration(migrations.Migration):
    dependencies = [
        ("ops", "0004_operators_console_permissions"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="fleet",
            options={
                "default_permissions": (),
                "managed": False,
                "permissions": [
                    ("view_fleet", "Can view queue figures and scaling advice"),
                    ("change_fleet", "Can revoke tasks and pause, resume or purge queues"),
                ],
            },
        ),
        migrations.CreateModel(
            name="PausedQueue",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                ("queue", models.CharField(max_length=200, unique=True)),
                ("reason", models.CharField(blank=True, max_length=500)),
                (
                    "paused_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ["queue"],
            },
        ),
        migrations.CreateModel(
            name="FleetAction",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                (
                    "action",
                    models.CharField(
                        choices=[("revoke", "revoke"), ("pause", "pause"), ("resume", "resume"), ("purge", "purge")],
                        db_index=True,
                        max_length=16,
                    ),
                ),
                ("target", models.CharField(db_index=True, max_length=200)),
                ("params", models.JSONField(blank=True, default=dict)),
                ("result", models.JSONField(blank=True, default=dict)),
                (
                    "requested_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ["-created_at"],
                "indexes": [models.Index(fields=["action", "-created_at"], name="ops_fleetac_action_45bd1e_idx")],
            },
        ),
        migrations.RunPython(fleet_control_grant, fleet_control_revoke),
    ]
