from django.urls import path

from apps.ai import api

urlpatterns = [
    path("sessions/<uuid:session_id>/suggestions/", api.SuggestionCollectionApi.as_view(), name="session-suggestions"),
    path("inference-requests/<uuid:request_id>/", api.InferenceRequestDetailApi.as_view(), name="inference-request"),
    path("suggestions/<uuid:suggestion_id>/feedback/", api.SuggestionFeedbackApi.as_view(), name="suggestion-feedback"),
]
