from django.apps import AppConfig


class EventbusConfig(AppConfig):
    name = "apps.eventbus"
    label = "eventbus"
    default_auto_field = "django.db.models.BigAutoField"
