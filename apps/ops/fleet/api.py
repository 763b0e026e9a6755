"""Fleet endpoints (validate, call, shape).

Reading (``ops.view_fleet``): queue figures, the scaling report, the tasks the
workers hold or that wait out a countdown, paused queues, the audit of actions.
Acting (``ops.change_fleet``): revoke a task; pause, resume or purge a work
queue (the purge repeats the queue name in ``confirm``). Each action is
audited (``FleetAction``); see apps/ops/fleet/services.py.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.common.schema import error_responses
from apps.common.serializers import StrictSerializer
from apps.ops.fleet import figures as fleet
from apps.ops.fleet import selectors, services
from apps.ops.models import FleetAction
from apps.ops.permissions import CanChangeFleet, CanViewFleet

_WINDOW = OpenApiParameter("window", int, description="Seconds of history the rates cover (1-3600, default 60).")


class _WindowSerializer(serializers.Serializer):
    window = serializers.IntegerField(min_value=1, max_value=3600, required=False, default=int(fleet.DEFAULT_WINDOW))


def _snapshot(request: Request, *, include_report: bool) -> dict:
    params = _WindowSerializer(data=request.query_params)
    params.is_valid(raise_exception=True)
    try:
        return fleet.fleet_snapshot(window=float(params.validated_data["window"]), include_report=include_report)
    except fleet.FleetUnavailable as exc:
        raise services.broker_unavailable(exc, "queue figures are unavailable") from exc


class FleetQueuesApi(APIView):
    """Per-queue depth, consumers, rates in/out, service time and oldest message age (see apps/ops/fleet/figures.py)."""

    permission_classes = [CanViewFleet]

    @extend_schema(parameters=[_WINDOW], responses={200: dict})
    def get(self, request: Request) -> Response:
        data = _snapshot(request, include_report=False)
        return Response(
            {"generated_at": data["generated_at"], "window_seconds": data["window_seconds"], "results": data["queues"]}
        )


class FleetReportApi(APIView):
    """The bottleneck and recommended worker counts per queue, with the arithmetic spelled out."""

    permission_classes = [CanViewFleet]

    @extend_schema(parameters=[_WINDOW], responses={200: dict})
    def get(self, request: Request) -> Response:
        data = _snapshot(request, include_report=True)
        return Response(
            {
                "generated_at": data["generated_at"],
                "window_seconds": data["window_seconds"],
                "queues": data["queues"],
                **data["report"],
            }
        )


def _errors(*codes: int) -> dict:
    return error_responses(*sorted({*codes, 401, 403, 429}))


class FleetActionOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    action = serializers.CharField()
    target = serializers.CharField()
    requested_by = serializers.CharField(source="requested_by.username", default=None)
    requested_at = serializers.DateTimeField(source="created_at")
    params = serializers.DictField()
    result = serializers.DictField()


class FleetTaskSerializer(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField(allow_null=True)
    state = serializers.CharField(help_text="active, reserved, scheduled or delayed (apps/ops/fleet/selectors.py)")
    worker = serializers.CharField(allow_null=True)
    queue = serializers.CharField(allow_null=True)
    eta = serializers.CharField(allow_null=True)
    retries = serializers.IntegerField(allow_null=True)
    started_at = serializers.FloatField(allow_null=True)
    args = serializers.CharField(allow_null=True)
    kwargs = serializers.CharField(allow_null=True)


class FleetTasksOutputSerializer(serializers.Serializer):
    workers = serializers.ListField(child=serializers.CharField())
    results = FleetTaskSerializer(many=True)


class PausedQueueOutputSerializer(serializers.Serializer):
    queue = serializers.CharField()
    paused_by = serializers.CharField(source="paused_by.username", default=None)
    paused_at = serializers.DateTimeField(source="created_at")
    reason = serializers.CharField()


def tasks_read() -> dict:
    try:
        return selectors.fleet_tasks()
    except selectors.InspectUnavailable as exc:
        raise services.broker_unavailable(exc, "the workers' tasks are unavailable") from exc


class FleetTasksApi(APIView):
    """Running (active), prefetched (reserved), ETA-held (scheduled) and countdown-waiting (delayed) tasks."""

    permission_classes = [CanViewFleet]

    @extend_schema(operation_id="ops_tasks_list", responses={200: FleetTasksOutputSerializer, **_errors(503)})
    def get(self, request: Request) -> Response:
        data = tasks_read()
        return Response(FleetTasksOutputSerializer({"workers": data["workers"], "results": data["tasks"]}).data)


class TaskRevokeApi(APIView):
    permission_classes = [CanChangeFleet]

    class InputSerializer(StrictSerializer):
        terminate = serializers.BooleanField(required=False, default=False)
        signal = serializers.ChoiceField(choices=list(services.TERMINATE_SIGNALS), required=False, default="SIGTERM")

    @extend_schema(
        operation_id="ops_task_revoke",
        request=InputSerializer,
        responses={201: FleetActionOutputSerializer, **_errors(400, 503)},
    )
    def post(self, request: Request, task_id: str) -> Response:
        data = self.InputSerializer(data=request.data if request.data is not None else {})
        data.is_valid(raise_exception=True)
        row = services.task_revoke(task_id=task_id, user=request.user, **data.validated_data)
        return Response(FleetActionOutputSerializer(row).data, status=status.HTTP_201_CREATED)


class PausedQueueListApi(APIView):
    permission_classes = [CanViewFleet]

    @extend_schema(operation_id="ops_paused_queues_list", responses={200: PausedQueueOutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(PausedQueueOutputSerializer(selectors.paused_queue_list(), many=True).data)


class QueuePauseApi(APIView):
    permission_classes = [CanChangeFleet]

    class InputSerializer(StrictSerializer):
        reason = serializers.CharField(required=False, default="", allow_blank=True, max_length=500)

    @extend_schema(
        operation_id="ops_queue_pause",
        request=InputSerializer,
        responses={201: FleetActionOutputSerializer, **_errors(400, 409, 503)},
    )
    def post(self, request: Request, queue: str) -> Response:
        data = self.InputSerializer(data=request.data if request.data is not None else {})
        data.is_valid(raise_exception=True)
        row = services.queue_pause(queue=queue, user=request.user, reason=data.validated_data["reason"])
        return Response(FleetActionOutputSerializer(row).data, status=status.HTTP_201_CREATED)


class QueueResumeApi(APIView):
    permission_classes = [CanChangeFleet]

    class InputSerializer(StrictSerializer):
        pass

    @extend_schema(
        operation_id="ops_queue_resume",
        request=InputSerializer,
        responses={201: FleetActionOutputSerializer, **_errors(400, 409, 503)},
    )
    def post(self, request: Request, queue: str) -> Response:
        self.InputSerializer(data=request.data if request.data is not None else {}).is_valid(raise_exception=True)
        row = services.queue_resume(queue=queue, user=request.user)
        return Response(FleetActionOutputSerializer(row).data, status=status.HTTP_201_CREATED)


class QueuePurgeApi(APIView):
    """Deletes the queue's ready messages; ``confirm`` must repeat the queue name (else 400, nothing deleted)."""

    permission_classes = [CanChangeFleet]

    class InputSerializer(StrictSerializer):
        confirm = serializers.CharField(required=False, default="", allow_blank=True, max_length=200)

    @extend_schema(
        operation_id="ops_queue_purge",
        request=InputSerializer,
        responses={201: FleetActionOutputSerializer, **_errors(400, 503)},
    )
    def post(self, request: Request, queue: str) -> Response:
        data = self.InputSerializer(data=request.data if request.data is not None else {})
        data.is_valid(raise_exception=True)
        row = services.queue_purge(queue=queue, confirm=data.validated_data["confirm"], user=request.user)
        return Response(FleetActionOutputSerializer(row).data, status=status.HTTP_201_CREATED)


class FleetActionListApi(APIView):
    """The most recent fleet actions (newest first), with who asked and what the workers answered."""

    permission_classes = [CanViewFleet]

    @extend_schema(operation_id="ops_actions_list", responses={200: FleetActionOutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        rows: list[FleetAction] = selectors.fleet_action_list()
        return Response(FleetActionOutputSerializer(rows, many=True).data)
