from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    name = "apps.realtime"
    label = "realtime"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete, post_save
        from rest_framework.authtoken.models import Token

        from apps.common.logging import secret_redaction_install
        from apps.context.hooks import hooks
        from apps.realtime import revocation
        from apps.realtime.broadcast import context_events_broadcast, session_access_revoke, session_broadcast

        # Committed appends and participant changes reach open sockets through these.
        hooks.events_appended = context_events_broadcast
        hooks.session_message = session_broadcast
        hooks.access_revoked = session_access_revoke
        # Users and tokens have no services of ours (admin, manage.py and DRF write
        # them directly): their signals push the revocation, after commit.
        user_model = get_user_model()
        post_save.connect(revocation.on_user_saved, sender=user_model, dispatch_uid="realtime.user_saved")
        post_delete.connect(revocation.on_user_deleted, sender=user_model, dispatch_uid="realtime.user_deleted")
        post_delete.connect(revocation.on_token_deleted, sender=Token, dispatch_uid="realtime.token_deleted")
        # ?token= (old WebSocket clients) never reaches a log line, uvicorn's included.
        secret_redaction_install()
