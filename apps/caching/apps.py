from django.apps import AppConfig


class CachingConfig(AppConfig):
    name = "apps.caching"
    label = "caching"
    default_auto_field = "django.db.models.BigAutoField"
