"""The "operators" group: every permission the ops endpoints check (apps/ops/permissions.py).

Permissions are normally created after the last migration (post_migrate); the
group needs them now, so they are created here for the apps involved. The
codenames are spelled out: a migration must not import app code that may
change later.
"""

from django.conf import settings
from django.contrib.auth.management import create_permissions
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps

OPERATOR_PERMISSIONS = (
    ("ops", "view_deadletter"),
    ("ops", "change_deadletter"),
    ("ops", "view_canaryrun"),
    ("ops", "change_canaryrun"),
    ("ops", "view_fleet"),
)


def operators_group_create(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    ops_config = apps.get_app_config("ops")
    ops_config.models_module = True  # the historical app config has none; create_permissions skips such apps
    create_permissions(ops_config, apps=apps, verbosity=0, using=schema_editor.connection.alias)
    ops_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.using(schema_editor.connection.alias).get_or_create(name=settings.OPS_OPERATORS_GROUP)
    for app_label, codename in OPERATOR_PERMISSIONS:
        group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))


def operators_group_delete(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    Group = apps.get_model("auth", "Group")
    Group.objects.using(schema_editor.connection.alias).filter(name=settings.OPS_OPERATORS_GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("ops", "0002_fleet_permission"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(operators_group_create, operators_group_delete)]
