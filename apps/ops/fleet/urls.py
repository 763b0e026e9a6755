"""Fleet endpoints under /api/v1/: queue figures and the report; tasks, revoke, pause, resume, purge, the audit."""

from django.urls import path

from apps.ops.fleet.api import (
    FleetActionListApi,
    FleetQueuesApi,
    FleetReportApi,
    FleetTasksApi,
    PausedQueueListApi,
    QueuePauseApi,
    QueuePurgeApi,
    QueueResumeApi,
    TaskRevokeApi,
)

urlpatterns = [
    path("ops/queues/", FleetQueuesApi.as_view(), name="ops-queues"),
    path("ops/report/", FleetReportApi.as_view(), name="ops-report"),
    path("ops/tasks/", FleetTasksApi.as_view(), name="ops-tasks"),
    path("ops/tasks/<str:task_id>/revoke/", TaskRevokeApi.as_view(), name="ops-task-revoke"),
    path("ops/queues/paused/", PausedQueueListApi.as_view(), name="ops-queues-paused"),
    path("ops/queues/<str:queue>/pause/", QueuePauseApi.as_view(), name="ops-queue-pause"),
    path("ops/queues/<str:queue>/resume/", QueueResumeApi.as_view(), name="ops-queue-resume"),
    path("ops/queues/<str:queue>/purge/", QueuePurgeApi.as_view(), name="ops-queue-purge"),
    path("ops/actions/", FleetActionListApi.as_view(), name="ops-actions"),
]
