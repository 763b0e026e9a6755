"""Fleet endpoints (permission ``ops.view_fleet``): queue figures and the scaling report (validate, call, shape)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.common.exceptions import ApplicationError
from apps.ops.fleet import figures as fleet
from apps.ops.permissions import CanViewFleet

_WINDOW = OpenApiParameter("window", int, description="Seconds of history the rates cover (1-3600, default 60).")


class _WindowSerializer(serializers.Serializer):
    window = serializers.IntegerField(min_value=1, max_value=3600, required=False, default=int(fleet.DEFAULT_WINDOW))


def _snapshot(request: Request, *, include_report: bool) -> dict:
    params = _WindowSerializer(data=request.query_params)
    params.is_valid(raise_exception=True)
    try:
        return fleet.fleet_snapshot(window=float(params.validated_data["window"]), include_report=include_report)
    except fleet.FleetUnavailable as exc:
        raise ApplicationError(
            "The message broker did not answer; queue figures are unavailable.",
            code="broker_unavailable",
            status_code=503,
            details={"error": str(exc)[:300]},
        ) from exc


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
