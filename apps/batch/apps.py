from django.apps import AppConfig


class BatchConfig(AppConfig):
    name = "apps.batch"
    label = "batch"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from apps.batch import subscribers  # noqa: F401 - registers the activity counters on the event bus
