"""REST API for suggestions, inference requests and feedback.

One view class per operation with nested serializers; ``GET`` and ``POST`` on
``/sessions/{id}/suggestions/`` are combined by inheritance at the bottom (as
in ``apps.context.api``). Views validate, call one service or selector, shape.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import Throttled
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.ai import selectors, services
from apps.ai.models import InferenceRequest, SuggestionFeedback, SuggestionKind
from apps.common.pagination import PageNumberPaginationWithSize
from apps.common.schema import error_responses
from apps.common.serializers import StrictSerializer
from apps.context import selectors as context_selectors


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    # Any request may be rate limited (429).
    return error_responses(*sorted({*codes, 429}))


class StrictCharField(serializers.CharField):
    """A JSON string only: DRF's CharField would turn ``5`` or ``true`` into text."""

    def to_internal_value(self, data: object) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


SESSION_ID = OpenApiParameter("session_id", OpenApiTypes.UUID, OpenApiParameter.PATH)


class SuggestionOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    kind = serializers.ChoiceField(choices=SuggestionKind.choices)
    content = serializers.JSONField()
    score = serializers.FloatField()
    source_seqs = serializers.ListField(child=serializers.IntegerField())
    trigger_seq = serializers.IntegerField()
    model_version = serializers.CharField()
    explanation = serializers.JSONField(
        help_text="Why it was suggested: the ranking's scores and matched terms, or the next-action model's guess."
    )
    created_at = serializers.DateTimeField()


class InferenceRequestOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=InferenceRequest.Status.choices)
    kind = serializers.ChoiceField(choices=InferenceRequest.Kind.choices)
    query = serializers.CharField(required=False)
    session_id = serializers.UUIDField()
    trigger_seq = serializers.IntegerField()
    model_version = serializers.CharField()
    queued_at = serializers.DateTimeField(allow_null=True)
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    error = serializers.CharField(required=False)
    suggestions = SuggestionOutputSerializer(many=True)


class SuggestionListApi(APIView):
    pagination_class = PageNumberPaginationWithSize

    class FilterSerializer(serializers.Serializer):
        kind = serializers.ChoiceField(choices=SuggestionKind.choices, required=False)

    @extend_schema(
        operation_id="suggestions_list",
        parameters=[SESSION_ID, FilterSerializer],
        responses={200: SuggestionOutputSerializer(many=True), **_errors(400, 401, 404)},
    )
    def get(self, request: Request, session_id: str) -> Response:
        filters = SuggestionListApi.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        session = context_selectors.session_get_for_user(session_id=session_id, user=request.user)
        suggestions = selectors.suggestion_list_for_session(session=session, **filters.validated_data)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(suggestions, request, view=self)
        return paginator.get_paginated_response([selectors.suggestion_to_dict(s) for s in page])


class SuggestionRequestApi(APIView):
    class InputSerializer(StrictSerializer):
        query = StrictCharField(max_length=services.QUERY_MAX_CHARS, trim_whitespace=True)

    class OutputSerializer(serializers.Serializer):
        id = serializers.UUIDField()
        status = serializers.CharField()
        kind = serializers.CharField()
        query = serializers.CharField()

    @extend_schema(
        operation_id="suggestions_request",
        parameters=[SESSION_ID],
        request=InputSerializer,
        responses={202: OutputSerializer, **_errors(400, 401, 404)},
    )
    def post(self, request: Request, session_id: str) -> Response:
        body = SuggestionRequestApi.InputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            inference = services.inference_request_create_query(
                session_id=session_id, user=request.user, query=body.validated_data["query"]
            )
        except services.AiQuotaExceeded as exc:
            # DRF's Throttled is what carries Retry-After through the one REST error mapping.
            raise Throttled(wait=exc.retry_after) from exc
        return Response(
            {"id": str(inference.id), "status": inference.status, "kind": inference.kind, "query": inference.query},
            status=status.HTTP_202_ACCEPTED,
        )


class InferenceRequestDetailApi(APIView):
    @extend_schema(
        operation_id="inference_requests_retrieve",
        parameters=[OpenApiParameter("request_id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
        responses={200: InferenceRequestOutputSerializer, **_errors(401, 404)},
    )
    def get(self, request: Request, request_id: str) -> Response:
        inference = selectors.inference_request_get_for_user(request_id=request_id, user=request.user)
        return Response(selectors.inference_request_to_dict(inference))


class SuggestionFeedbackApi(APIView):
    class InputSerializer(StrictSerializer):
        verdict = serializers.ChoiceField(choices=SuggestionFeedback.Verdict.choices)
        comment = StrictCharField(max_length=2000, required=False, allow_blank=True, default="")

    class OutputSerializer(serializers.Serializer):
        suggestion_id = serializers.UUIDField()
        verdict = serializers.CharField()
        comment = serializers.CharField()

    @extend_schema(
        operation_id="suggestions_feedback",
        parameters=[OpenApiParameter("suggestion_id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
        request=InputSerializer,
        responses={201: OutputSerializer, **_errors(400, 401, 404)},
    )
    def post(self, request: Request, suggestion_id: str) -> Response:
        body = SuggestionFeedbackApi.InputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        feedback = services.suggestion_feedback_submit(
            suggestion_id=suggestion_id, user=request.user, **body.validated_data
        )
        return Response(
            {"suggestion_id": str(feedback.suggestion_id), "verdict": feedback.verdict, "comment": feedback.comment},
            status=status.HTTP_201_CREATED,
        )


class SuggestionCollectionApi(SuggestionListApi, SuggestionRequestApi):
    pass
