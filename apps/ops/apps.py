from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "apps.ops"
    label = "ops"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from apps.ops import admin_fleet, task_signals  # noqa: F401 - registers the admin page and Celery hooks
