from django.apps import AppConfig
from django.conf import settings


class OpsConfig(AppConfig):
    name = "apps.ops"
    label = "ops"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        import importlib

        from django.contrib.auth.signals import user_login_failed

        from apps.batch.hooks import hooks as batch_hooks
        from apps.eventbus.hooks import hooks
        from apps.ops import (
            checks,  # noqa: F401 - registers the deploy checks (METRICS_TOKEN)
            lockout,
            metrics,  # noqa: F401 - a worker serves its metrics (METRICS_PORT)
        )
        from apps.ops.deadletters import services
        from apps.ops.fleet import (
            figures,
            signals,  # noqa: F401 - connects the Celery signal handlers
        )

        # Wrong passwords (admin login, token login) count towards the lockout.
        user_login_failed.connect(lockout.on_user_login_failed, dispatch_uid="apps.ops.lockout")
        # Tasks and subscribers report failures and replay outcomes up to this layer.
        hooks.failure_recorded = services.task_failure_record
        hooks.replay_finished = services.dead_letter_replay_finish
        # Each task run's start and duration feed the fleet figures.
        hooks.task_started = figures.task_started
        hooks.task_finished = figures.task_finished
        # The retention job (workers/batch/jobs.py) purges dead letters through this.
        batch_hooks.dead_letter_purge = services.dead_letter_purge
        batch_hooks.canary_run_purge = services.canary_run_purge
        # The batch jobs (workers/) register with apps.batch.jobs on import; the
        # jobs API, run_job and beat find them in its registry.
        for module in settings.BATCH_JOB_MODULES:
            importlib.import_module(module)
