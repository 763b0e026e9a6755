from django.urls import path

from apps.batch import api

urlpatterns = [
    path("ops/jobs/", api.JobRunListApi.as_view(), name="ops-jobs"),
    path("ops/jobs/<str:run_id>/", api.JobRunDetailApi.as_view(), name="ops-job-detail"),
    path("ops/stats/", api.ActivityStatsApi.as_view(), name="ops-stats"),
]
