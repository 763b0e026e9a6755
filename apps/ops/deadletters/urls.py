"""Operator endpoints (each checks its Django permission, apps/ops/permissions.py): dead letters and the canary."""

from django.urls import path

from apps.ops.deadletters import api

urlpatterns = [
    path("dead-letters/", api.DeadLetterListApi.as_view(), name="dead-letters"),
    path("dead-letters/replay/", api.DeadLetterBulkReplayApi.as_view(), name="dead-letters-replay"),
    path("dead-letters/<uuid:dead_letter_id>/", api.DeadLetterDetailApi.as_view(), name="dead-letter-detail"),
    path("dead-letters/<uuid:dead_letter_id>/replay/", api.DeadLetterReplayApi.as_view(), name="dead-letter-replay"),
    path("dead-letters/<uuid:dead_letter_id>/discard/", api.DeadLetterDiscardApi.as_view(), name="dead-letter-discard"),
    path("ops/canary/", api.CanaryCreateApi.as_view(), name="ops-canary"),
    path("ops/canary/<uuid:canary_id>/", api.CanaryDetailApi.as_view(), name="ops-canary-detail"),
]
