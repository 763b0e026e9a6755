"""The operators group also reads model versions (and promotes or rolls them back) and job runs: the console."""

from django.conf import settings
from django.contrib.auth.management import create_permissions
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps

CONSOLE_PERMISSIONS = (
    ("ai", "view_modelversion"),
    ("ai", "change_modelversion"),
    ("batch", "view_jobrun"),
)


def console_permissions_grant(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    for label in ("ai", "batch"):
        config = apps.get_app_config(label)
        config.models_module = True  # see 0003: create_permissions skips historical app configs without it
        create_permissions(config, apps=apps, verbosity=0, using=schema_editor.connection.alias)
        config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.using(schema_editor.connection.alias).get_or_create(name=settings.OPS_OPERATORS_GROUP)
    for app_label, codename in CONSOLE_PERMISSIONS:
        group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))


def console_permissions_revoke(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group = Group.objects.using(schema_editor.connection.alias).filter(name=settings.OPS_OPERATORS_GROUP).first()
    if group is not None:
        for app_label, codename in CONSOLE_PERMISSIONS:
            group.permissions.remove(*Permission.objects.filter(content_type__app_label=app_label, codename=codename))


class Migration(migrations.Migration):
    dependencies = [
        ("ops", "0003_operators_group"),
        ("ai", "0003_pending_query_unique"),
        ("batch", "0003_sessionactivity_from_eventbus"),
    ]

    operations = [migrations.RunPython(console_permissions_grant, console_permissions_revoke)]
