"""Fleet monitoring endpoints: /api/v1/ops/queues/, /api/v1/ops/report/."""

from django.urls import path

from apps.ops.fleet.api import FleetQueuesApi, FleetReportApi

urlpatterns = [
    path("ops/queues/", FleetQueuesApi.as_view(), name="ops-queues"),
    path("ops/report/", FleetReportApi.as_view(), name="ops-report"),
]
