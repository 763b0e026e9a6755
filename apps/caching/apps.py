from django.apps import AppConfig


class CachingConfig(AppConfig):
    name = "apps.caching"
    label = "caching"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Invalidate cached token lookups when DRF tokens or users change (see
        # apps/caching/auth.py for why these two use signals).
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete, post_save
        from rest_framework.authtoken.models import Token

        from apps.caching import auth, subscribers  # noqa: F401 - subscribers registers cache invalidation

        post_save.connect(auth.on_token_changed, sender=Token, dispatch_uid="caching.token_saved")
        post_delete.connect(auth.on_token_changed, sender=Token, dispatch_uid="caching.token_deleted")
        post_save.connect(auth.on_user_changed, sender=get_user_model(), dispatch_uid="caching.user_saved")
        post_delete.connect(auth.on_user_changed, sender=get_user_model(), dispatch_uid="caching.user_deleted")
