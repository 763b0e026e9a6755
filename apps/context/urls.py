from django.urls import path

from apps.context import api

urlpatterns = [
    path("auth/token/", api.TokenObtainApi.as_view(), name="auth-token"),
    path("auth/token/rotate/", api.TokenRotateApi.as_view(), name="auth-token-rotate"),
    path("auth/token/revoke/", api.TokenRevokeApi.as_view(), name="auth-token-revoke"),
    path("sessions/", api.SessionCollectionApi.as_view(), name="sessions"),
    path("sessions/<uuid:session_id>/", api.SessionItemApi.as_view(), name="session-detail"),
    path("sessions/<uuid:session_id>/participants/", api.ParticipantCollectionApi.as_view(), name="participants"),
    path(
        "sessions/<uuid:session_id>/participants/<str:username>/",
        api.ParticipantRemoveApi.as_view(),
        name="participant-detail",
    ),
    path("sessions/<uuid:session_id>/context/", api.ContextSnapshotApi.as_view(), name="session-context"),
    path("sessions/<uuid:session_id>/events/", api.EventCollectionApi.as_view(), name="session-events"),
    path("preferences/", api.PreferencesApi.as_view(), name="preferences"),
]
