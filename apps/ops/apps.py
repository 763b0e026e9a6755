from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "apps.ops"
    label = "ops"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from apps.eventbus.hooks import hooks
        from apps.ops import admin_fleet, services, task_signals  # noqa: F401 - registers the admin page and Celery hooks

        # Tasks and subscribers report failures and replay outcomes up to this layer.
        hooks.failure_recorded = services.task_failure_record
        hooks.replay_finished = services.dead_letter_replay_finish
