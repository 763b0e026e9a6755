from django.apps import AppConfig


class BatchConfig(AppConfig):
    name = "apps.batch"
    label = "batch"
    default_auto_field = "django.db.models.BigAutoField"
