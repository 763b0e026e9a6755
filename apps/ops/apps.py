from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "apps.ops"
    label = "ops"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from apps.batch.hooks import hooks as batch_hooks
        from apps.eventbus.hooks import hooks
        from apps.ops import admin_fleet, services, task_signals  # noqa: F401 - registers the admin page and Celery hooks

        # Tasks and subscribers report failures and replay outcomes up to this layer.
        hooks.failure_recorded = services.task_failure_record
        hooks.replay_finished = services.dead_letter_replay_finish
        # The retention job (workers/batch/jobs.py) purges dead letters through this.
        batch_hooks.dead_letter_purge = services.dead_letter_purge
