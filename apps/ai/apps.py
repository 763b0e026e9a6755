from django.apps import AppConfig


class AiConfig(AppConfig):
    name = "apps.ai"
    label = "ai"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from apps.ai import subscribers  # noqa: F401 - registers the AI trigger on the event bus
