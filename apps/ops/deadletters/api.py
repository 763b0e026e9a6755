"""REST API for operators: dead letters and the canary.

Each view names the Django permission it needs (apps/ops/permissions.py):
reading needs ``view_*``, replay, discard, bulk replay and starting a canary
need ``change_*``; the ``operators`` group holds them all.

One view class per operation with nested serializers; views validate, call one
service or selector, and shape the answer.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.common.exceptions import ApplicationError
from apps.common.pagination import PageNumberPaginationWithSize
from apps.common.schema import error_responses
from apps.common.serializers import StrictSerializer
from apps.common.throttling import DefaultThrottle, _RedisThrottle, _user_id
from apps.ops.deadletters import selectors, services
from apps.ops.models import CanaryMode, DeadLetterReason, DeadLetterStatus, ReplayStatus
from apps.ops.permissions import CanChangeDeadLetters, CanRunCanary, CanViewCanary, CanViewDeadLetters

# Bulk replay publishes at most this many messages per request.
BULK_REPLAY_MAX = 500


class DeadLetterReplayThrottle(_RedisThrottle):
    """Replays per operator (scope ``dead_letter_replay``): a replay storm can flood a queue."""

    def limits(self, request: Request) -> list[tuple[str, str]]:
        user_id = _user_id(request)
        return [("dead_letter_replay", user_id)] if user_id else []


def _errors(*codes: int) -> dict:
    return error_responses(*sorted({*codes, 401, 403, 429}))


class ReplayOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
    forced = serializers.BooleanField()
    new_task_id = serializers.CharField()
    requested_by = serializers.CharField(source="requested_by.username", default=None)
    requested_at = serializers.DateTimeField(source="created_at")
    finished_at = serializers.DateTimeField(allow_null=True)
    error = serializers.CharField()


class DeadLetterOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    queue = serializers.CharField()
    task_name = serializers.CharField()
    task_id = serializers.CharField()
    reason = serializers.CharField()
    status = serializers.CharField()
    exception = serializers.SerializerMethodField()
    exception_class = serializers.CharField()
    exception_message = serializers.CharField()
    traceback = serializers.CharField()
    attempts = serializers.IntegerField()
    fingerprint = serializers.CharField()
    args = serializers.JSONField()
    kwargs = serializers.JSONField()
    raw_body = serializers.CharField()
    headers = serializers.JSONField()
    x_death = serializers.JSONField()
    correlation_id = serializers.CharField()
    first_failed_at = serializers.DateTimeField(allow_null=True)
    last_failed_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    replay_of = serializers.UUIDField(source="replay_of_id", allow_null=True)
    replays = ReplayOutputSerializer(many=True, source="replays.all")

    def get_exception(self, obj: Any) -> str:
        if not obj.exception_class:
            return obj.exception_message
        return f"{obj.exception_class}: {obj.exception_message}" if obj.exception_message else obj.exception_class


DEAD_LETTER_ID = OpenApiParameter("dead_letter_id", OpenApiTypes.UUID, OpenApiParameter.PATH)


class DeadLetterFilterSerializer(StrictSerializer):
    queue = serializers.CharField(required=False, max_length=200)
    task_name = serializers.CharField(required=False, max_length=200)
    reason = serializers.ChoiceField(required=False, choices=DeadLetterReason.choices)
    fingerprint = serializers.CharField(required=False, max_length=64)
    status = serializers.ChoiceField(required=False, choices=DeadLetterStatus.choices)
    task_id = serializers.CharField(required=False, max_length=200)


class DeadLetterListApi(APIView):
    permission_classes = [CanViewDeadLetters]

    class FilterSerializer(DeadLetterFilterSerializer):
        page = serializers.IntegerField(required=False, min_value=1)
        page_size = serializers.IntegerField(required=False, min_value=1, max_value=200)

    @extend_schema(
        operation_id="dead_letters_list",
        parameters=[FilterSerializer],
        responses={200: DeadLetterOutputSerializer(many=True), **_errors(400)},
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params.dict())
        filters.is_valid(raise_exception=True)
        queryset = selectors.dead_letter_list(filters=filters.validated_data)
        paginator = PageNumberPaginationWithSize()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(DeadLetterOutputSerializer(page, many=True).data)


class DeadLetterDetailApi(APIView):
    permission_classes = [CanViewDeadLetters]

    @extend_schema(
        operation_id="dead_letters_retrieve",
        parameters=[DEAD_LETTER_ID],
        responses={200: DeadLetterOutputSerializer, **_errors(404)},
    )
    def get(self, request: Request, dead_letter_id: Any) -> Response:
        dead_letter = selectors.dead_letter_get(dead_letter_id=dead_letter_id)
        return Response(DeadLetterOutputSerializer(dead_letter).data)


class DeadLetterReplayApi(APIView):
    permission_classes = [CanChangeDeadLetters]
    throttle_classes = [DefaultThrottle, DeadLetterReplayThrottle]

    class InputSerializer(StrictSerializer):
        force = serializers.BooleanField(required=False, default=False)

    @extend_schema(
        operation_id="dead_letters_replay",
        parameters=[DEAD_LETTER_ID],
        request=InputSerializer,
        responses={201: ReplayOutputSerializer, **_errors(400, 404, 409, 503)},
    )
    def post(self, request: Request, dead_letter_id: Any) -> Response:
        data = self.InputSerializer(data=request.data if request.data is not None else {})
        data.is_valid(raise_exception=True)
        replay = services.dead_letter_replay(
            dead_letter_id=dead_letter_id, user=request.user, force=data.validated_data["force"]
        )
        if replay.status == ReplayStatus.PUBLISH_FAILED:
            raise ApplicationError(
                "The broker did not accept the replay; try again.",
                code="publish_failed",
                status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                details={"replay_id": str(replay.id), "error": replay.error},
            )
        return Response(ReplayOutputSerializer(replay).data, status=status.HTTP_201_CREATED)


class DeadLetterDiscardApi(APIView):
    permission_classes = [CanChangeDeadLetters]

    @extend_schema(
        operation_id="dead_letters_discard",
        parameters=[DEAD_LETTER_ID],
        request=None,
        responses={200: DeadLetterOutputSerializer, **_errors(404)},
    )
    def post(self, request: Request, dead_letter_id: Any) -> Response:
        dead_letter = services.dead_letter_discard(dead_letter_id=dead_letter_id, user=request.user)
        return Response(DeadLetterOutputSerializer(selectors.dead_letter_get(dead_letter_id=dead_letter.id)).data)


class DeadLetterBulkReplayApi(APIView):
    permission_classes = [CanChangeDeadLetters]
    throttle_classes = [DefaultThrottle, DeadLetterReplayThrottle]

    class InputSerializer(DeadLetterFilterSerializer):
        force = serializers.BooleanField(required=False, default=False)
        limit = serializers.IntegerField(required=False, default=100, min_value=1, max_value=BULK_REPLAY_MAX)

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if not any(attrs.get(key) for key in selectors.DEAD_LETTER_FILTERS):
                raise serializers.ValidationError(
                    {"non_field_errors": ["Give at least one filter (queue, task_name, reason, fingerprint, ...)."]}
                )
            return attrs

    class OutputSerializer(serializers.Serializer):
        replayed = serializers.ListField(child=serializers.UUIDField())
        skipped = serializers.ListField(child=serializers.UUIDField())
        failed = serializers.ListField(child=serializers.UUIDField())
        truncated = serializers.BooleanField()

    @extend_schema(
        operation_id="dead_letters_replay_bulk",
        request=InputSerializer,
        responses={200: OutputSerializer, **_errors(400)},
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data if request.data is not None else {})
        data.is_valid(raise_exception=True)
        params = dict(data.validated_data)
        force, limit = params.pop("force"), params.pop("limit")
        result = services.dead_letter_replay_bulk(
            queryset=selectors.dead_letter_list(filters=params), user=request.user, force=force, limit=limit
        )
        return Response(self.OutputSerializer(result).data)


class CanaryOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    mode = serializers.CharField()
    status = serializers.CharField()
    task_id = serializers.CharField()
    attempts = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    dead_letter = serializers.SerializerMethodField()

    def get_dead_letter(self, obj: Any) -> dict[str, Any] | None:
        dead_letter = selectors.canary_dead_letter(run=obj)
        if dead_letter is None:
            return None
        return {"id": str(dead_letter.id), "reason": dead_letter.reason, "exception_class": dead_letter.exception_class}


class CanaryCreateApi(APIView):
    permission_classes = [CanRunCanary]

    class InputSerializer(StrictSerializer):
        mode = serializers.ChoiceField(choices=CanaryMode.choices)

    @extend_schema(
        operation_id="ops_canary_create",
        request=InputSerializer,
        responses={201: CanaryOutputSerializer, **_errors(400)},
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data if request.data is not None else {})
        data.is_valid(raise_exception=True)
        run = services.canary_run_create(mode=data.validated_data["mode"], user=request.user)
        return Response(CanaryOutputSerializer(run).data, status=status.HTTP_201_CREATED)


class CanaryDetailApi(APIView):
    permission_classes = [CanViewCanary]

    @extend_schema(
        operation_id="ops_canary_retrieve",
        parameters=[OpenApiParameter("canary_id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
        responses={200: CanaryOutputSerializer, **_errors(404)},
    )
    def get(self, request: Request, canary_id: Any) -> Response:
        return Response(CanaryOutputSerializer(selectors.canary_run_get(canary_id=canary_id)).data)
