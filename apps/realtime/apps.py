from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    name = "apps.realtime"
    label = "realtime"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from apps.context.hooks import hooks
        from apps.realtime.broadcast import context_events_broadcast, session_broadcast

        # Committed appends and participant changes reach open sockets through these.
        hooks.events_appended = context_events_broadcast
        hooks.session_message = session_broadcast
