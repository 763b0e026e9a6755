"""REST API for sessions, participants, context events and preferences.

One view class per operation, each with its own nested input/output
serializers (HackSoft style). Where two operations share a URL (``GET`` and
``POST /sessions/``), a routing class at the bottom of the module combines the
operation classes by inheritance; handlers therefore name their serializers
through their own class (``SessionCreateApi.InputSerializer``), never through
``self``. Views validate, call one service or selector, and shape the answer.

Long on purpose: one small view class per operation (the style above) over
sessions, participants, events and preferences; the routing classes at the
bottom combine them by URL, so they stay in one module.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import authenticate
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.common.exceptions import NotFound, ValidationFailed
from apps.common.pagination import PageNumberPaginationWithSize
from apps.common.schema import error_responses
from apps.common.serializers import JSONObjectField, StrictSerializer
from apps.common.services import api_token_expires_at, api_token_issue, api_token_revoke, api_token_rotate
from apps.common.throttling import DefaultThrottle, LoginThrottle
from apps.context import idempotency, selectors, services
from apps.context.models import ContextEvent, Participant, Session
from apps.context.services import EventInput


def _errors(*codes: int) -> dict:
    # Any request may be rate limited (429).
    return error_responses(*sorted({*codes, 429}))


SESSION_ID = OpenApiParameter("session_id", OpenApiTypes.UUID, OpenApiParameter.PATH)
IDEMPOTENCY_KEY = OpenApiParameter(
    idempotency.HEADER,
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    required=False,
    description="Repeat with the same body: the first response again, nothing written. "
    "Another body: 422. First request still running: 409.",
)


class SessionOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    title = serializers.CharField()
    state = serializers.ChoiceField(choices=Session.State.choices)
    owner = serializers.CharField(source="owner.username")
    metadata = serializers.DictField()
    last_seq = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    last_activity_at = serializers.DateTimeField()
    closed_at = serializers.DateTimeField(allow_null=True)


class ParticipantOutputSerializer(serializers.Serializer):
    username = serializers.CharField(source="user.username")
    role = serializers.ChoiceField(choices=Participant.Role.choices)
    joined_at = serializers.DateTimeField()


class EventOutputSerializer(serializers.Serializer):
    seq = serializers.IntegerField()
    event_type = serializers.ChoiceField(choices=ContextEvent.EventType.choices)
    data = serializers.DictField()
    user = serializers.CharField(source="author.username", allow_null=True, default=None)
    client_msg_id = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()

    def to_representation(self, instance: ContextEvent) -> dict[str, Any]:
        return selectors.context_event_to_dict(instance)


def _session_or_404(request: Request, session_id: Any) -> Session:
    return selectors.session_get_for_user(session_id=session_id, user=request.user)


# --- auth --------------------------------------------------------------------


class TokenObtainApi(APIView):
    """Exchange a username and password for an API token."""

    authentication_classes: list = []  # a stale token header must not block logging in
    permission_classes = [AllowAny]
    throttle_classes = [LoginThrottle, DefaultThrottle]

    class InputSerializer(StrictSerializer):
        username = serializers.CharField(max_length=150)
        password = serializers.CharField(max_length=4096, trim_whitespace=False)

    class OutputSerializer(serializers.Serializer):
        token = serializers.CharField()
        expires_at = serializers.DateTimeField(allow_null=True, help_text="Null when tokens never expire.")

    @extend_schema(
        operation_id="auth_token_create",
        tags=["auth"],
        request=InputSerializer,
        responses={200: OutputSerializer, **_errors(400, 429)},
        auth=[],
    )
    def post(self, request: Request) -> Response:
        data = TokenObtainApi.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = authenticate(request=request, **data.validated_data)
        if user is None or not user.is_active:
            raise ValidationFailed("Wrong username or password.", code="invalid_credentials")
        return Response(_token_body(api_token_issue(user=user)))


def _token_body(token: Any) -> dict[str, Any]:
    return TokenObtainApi.OutputSerializer({"token": token.key, "expires_at": api_token_expires_at(token)}).data


class TokenRotateApi(APIView):
    """Replace the caller's token with a new one; the old key stops working at once (open sockets close 4401)."""

    @extend_schema(
        operation_id="auth_token_rotate",
        tags=["auth"],
        request=None,
        responses={200: TokenObtainApi.OutputSerializer, **_errors(401)},
    )
    def post(self, request: Request) -> Response:
        return Response(_token_body(api_token_rotate(user=request.user)))


class TokenRevokeApi(APIView):
    """End the caller's token (log out everywhere it is used; open sockets close 4401)."""

    @extend_schema(operation_id="auth_token_revoke", tags=["auth"], request=None, responses={204: None, **_errors(401)})
    def post(self, request: Request) -> Response:
        api_token_revoke(user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- sessions ----------------------------------------------------------------


class SessionListApi(APIView):
    pagination_class = PageNumberPaginationWithSize

    class FilterSerializer(serializers.Serializer):
        state = serializers.ChoiceField(choices=Session.State.choices, required=False)
        search = serializers.CharField(max_length=200, required=False)

    @extend_schema(
        operation_id="sessions_list",
        tags=["sessions"],
        parameters=[FilterSerializer],
        responses={200: SessionOutputSerializer(many=True), **_errors(400, 401, 404)},
    )
    def get(self, request: Request) -> Response:
        filters = SessionListApi.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        sessions = selectors.session_list_for_user(user=request.user, **filters.validated_data)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(sessions, request, view=self)
        return paginator.get_paginated_response(SessionOutputSerializer(page, many=True).data)


class SessionCreateApi(APIView):
    class InputSerializer(StrictSerializer):
        title = serializers.CharField(max_length=200)
        metadata = JSONObjectField(required=False, max_bytes=16_384)

    @extend_schema(
        operation_id="sessions_create",
        tags=["sessions"],
        request=InputSerializer,
        responses={201: SessionOutputSerializer, **_errors(400, 401)},
    )
    def post(self, request: Request) -> Response:
        data = SessionCreateApi.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        session = services.session_create(owner=request.user, **data.validated_data)
        return Response(SessionOutputSerializer(session).data, status=status.HTTP_201_CREATED)


class SessionDetailApi(APIView):
    @extend_schema(
        operation_id="sessions_retrieve",
        tags=["sessions"],
        parameters=[SESSION_ID],
        responses={200: SessionOutputSerializer, **_errors(401, 404)},
    )
    def get(self, request: Request, session_id: Any) -> Response:
        return Response(SessionOutputSerializer(_session_or_404(request, session_id)).data)


class SessionUpdateApi(APIView):
    class InputSerializer(StrictSerializer):
        title = serializers.CharField(max_length=200, required=False)
        metadata = JSONObjectField(required=False, max_bytes=16_384)
        state = serializers.ChoiceField(choices=Session.State.choices, required=False)

    @extend_schema(
        operation_id="sessions_partial_update",
        tags=["sessions"],
        parameters=[SESSION_ID],
        request=InputSerializer,
        responses={200: SessionOutputSerializer, **_errors(400, 401, 403, 404)},
        description="Editors change title and metadata; only the owner changes `state` (close/reopen).",
    )
    def patch(self, request: Request, session_id: Any) -> Response:
        session = _session_or_404(request, session_id)
        data = SessionUpdateApi.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        session = services.session_update(session=session, actor=request.user, **data.validated_data)
        return Response(SessionOutputSerializer(session).data)


class SessionDeleteApi(APIView):
    @extend_schema(
        operation_id="sessions_destroy",
        tags=["sessions"],
        parameters=[SESSION_ID],
        responses={204: None, **_errors(401, 403, 404)},
        description="Only the owner deletes a session (with its events).",
    )
    def delete(self, request: Request, session_id: Any) -> Response:
        session = _session_or_404(request, session_id)
        services.session_delete(session=session, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- participants ------------------------------------------------------------


class ParticipantListApi(APIView):
    pagination_class = PageNumberPaginationWithSize

    @extend_schema(
        operation_id="participants_list",
        tags=["participants"],
        parameters=[SESSION_ID],
        responses={200: ParticipantOutputSerializer(many=True), **_errors(401, 404)},
    )
    def get(self, request: Request, session_id: Any) -> Response:
        session = _session_or_404(request, session_id)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(selectors.participant_list(session=session), request, view=self)
        return paginator.get_paginated_response(ParticipantOutputSerializer(page, many=True).data)


class ParticipantAddApi(APIView):
    class InputSerializer(StrictSerializer):
        username = serializers.CharField(max_length=150)
        role = serializers.ChoiceField(choices=[Participant.Role.EDITOR, Participant.Role.VIEWER])

    @extend_schema(
        operation_id="participants_create",
        tags=["participants"],
        parameters=[SESSION_ID],
        request=InputSerializer,
        responses={201: ParticipantOutputSerializer, **_errors(400, 401, 403, 404, 409)},
        description="The owner adds a user, or changes a participant's role.",
    )
    def post(self, request: Request, session_id: Any) -> Response:
        session = _session_or_404(request, session_id)
        data = ParticipantAddApi.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        participant = services.participant_add(session=session, actor=request.user, **data.validated_data)
        return Response(ParticipantOutputSerializer(participant).data, status=status.HTTP_201_CREATED)


class ParticipantRemoveApi(APIView):
    @extend_schema(
        operation_id="participants_destroy",
        tags=["participants"],
        parameters=[SESSION_ID, OpenApiParameter("username", OpenApiTypes.STR, OpenApiParameter.PATH)],
        responses={204: None, **_errors(401, 403, 404, 409)},
        description="The owner removes a participant, or a participant removes themself (leaves).",
    )
    def delete(self, request: Request, session_id: Any, username: str) -> Response:
        session = _session_or_404(request, session_id)
        if "\x00" in username:  # PostgreSQL text cannot hold NUL; no such user can exist
            raise NotFound("Participant not found.")
        services.participant_remove(session=session, actor=request.user, username=username)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- context -----------------------------------------------------------------


class SnapshotOutputSerializer(serializers.Serializer):
    class SnapshotParticipantSerializer(serializers.Serializer):
        username = serializers.CharField()
        role = serializers.ChoiceField(choices=Participant.Role.choices)
        joined_at = serializers.DateTimeField()

    session_id = serializers.UUIDField()
    title = serializers.CharField()
    state = serializers.ChoiceField(choices=Session.State.choices)
    metadata = serializers.DictField()
    last_seq = serializers.IntegerField()
    participants = SnapshotParticipantSerializer(many=True)
    recent_events = EventOutputSerializer(many=True)


class ContextSnapshotApi(APIView):
    @extend_schema(
        operation_id="context_snapshot",
        tags=["context"],
        parameters=[SESSION_ID],
        responses={200: SnapshotOutputSerializer, **_errors(401, 404)},
        description="State, participants and the most recent events; resume with "
        "`GET .../events/?after_seq=<last_seq>` to miss nothing.",
    )
    def get(self, request: Request, session_id: Any) -> Response:
        session = _session_or_404(request, session_id)
        # The selector already returns the wire shape; re-serialising it costs time for nothing.
        return Response(selectors.context_snapshot(session=session))


class EventListApi(APIView):
    class FilterSerializer(serializers.Serializer):
        after_seq = serializers.IntegerField(min_value=0, max_value=2**63 - 1, required=False, default=0)
        limit = serializers.IntegerField(min_value=1, max_value=1000, required=False, default=100)

    class OutputSerializer(serializers.Serializer):
        results = EventOutputSerializer(many=True)
        next = serializers.URLField(allow_null=True, help_text="The next page, or null at the end.")

    @extend_schema(
        operation_id="events_list",
        tags=["context"],
        parameters=[SESSION_ID, FilterSerializer],
        responses={200: OutputSerializer, **_errors(400, 401, 404)},
        description="Events with `seq > after_seq` in `seq` order, at most `limit` and about EVENT_PAGE_MAX_BYTES "
        "(default 1 MiB; a page holds at least one event); follow `next` until it is null.",
    )
    def get(self, request: Request, session_id: Any) -> Response:
        session = _session_or_404(request, session_id)
        filters = EventListApi.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        after_seq, limit = filters.validated_data["after_seq"], filters.validated_data["limit"]
        # At most `limit` events and about EVENT_PAGE_MAX_BYTES: a page of large events stops early.
        page = selectors.context_event_page(
            session=session, after_seq=after_seq, limit=limit, max_bytes=settings.EVENT_PAGE_MAX_BYTES
        )
        next_url = None
        if page.has_more:
            query = urlencode({"after_seq": page.events[-1].seq, "limit": limit})
            next_url = request.build_absolute_uri(f"{request.path}?{query}")
        return Response({"results": [selectors.context_event_to_dict(e) for e in page.events], "next": next_url})


class EventAppendApi(APIView):
    class EventInputSerializer(StrictSerializer):
        event_type = serializers.ChoiceField(choices=ContextEvent.EventType.choices)
        data = JSONObjectField(required=False)
        client_msg_id = serializers.CharField(max_length=64, required=False, allow_blank=True)

    class BatchInputSerializer(StrictSerializer):
        events = serializers.ListField(child=serializers.DictField(), allow_empty=False)

    class BatchOutputSerializer(serializers.Serializer):
        events = EventOutputSerializer(many=True)

    @extend_schema(
        operation_id="events_create",
        tags=["context"],
        parameters=[SESSION_ID, IDEMPOTENCY_KEY],
        request=PolymorphicProxySerializer(
            component_name="EventAppendRequest",
            serializers=[EventInputSerializer, BatchInputSerializer],
            resource_type_field_name=None,
        ),
        responses={
            201: PolymorphicProxySerializer(
                component_name="EventAppendResponse",
                serializers=[EventOutputSerializer, BatchOutputSerializer],
                resource_type_field_name=None,
            ),
            **_errors(400, 401, 403, 404, 409, 413, 422),
        },
        description='One event `{event_type, data, client_msg_id?}` or a batch `{"events": [...]}` '
        "(at most EVENT_BATCH_MAX, default 500), all or nothing. Events whose `client_msg_id` "
        "is already stored come back as stored instead of being written again.",
    )
    def post(self, request: Request, session_id: Any) -> Response:
        session = selectors.session_ref_for_participant(session_id=session_id, user=request.user)
        body = request.data
        is_batch = isinstance(body, dict) and "events" in body
        events = EventAppendApi._parse_events(body, is_batch=is_batch)

        def work() -> tuple[int, Any]:
            stored = services.context_event_append(session=session, author=request.user, events=events)
            out = [selectors.context_event_to_dict(e) for e in stored]
            return status.HTTP_201_CREATED, ({"events": out} if is_batch else out[0])

        result = idempotency.idempotent_call(
            user=request.user,
            key=request.headers.get(idempotency.HEADER),
            scope=f"POST {request.path}",
            payload=body,
            work=work,
        )
        headers = {"Idempotent-Replayed": "true"} if result.replayed else None
        return Response(result.body, status=result.status, headers=headers)

    @staticmethod
    def _parse_events(body: Any, *, is_batch: bool) -> list[EventInput]:
        if not is_batch:
            single = EventAppendApi.EventInputSerializer(data=body)
            single.is_valid(raise_exception=True)
            return [EventInput(**single.validated_data)]
        batch = EventAppendApi.BatchInputSerializer(data=body)
        raw = body.get("events")
        if isinstance(raw, list) and len(raw) > settings.EVENT_BATCH_MAX:
            # Checked before validating each event: a huge batch fails fast.
            raise ValidationFailed(
                f"A batch holds at most {settings.EVENT_BATCH_MAX} events.",
                code="batch_too_large",
                details={"max": settings.EVENT_BATCH_MAX, "got": len(raw)},
            )
        batch.is_valid(raise_exception=True)
        parsed: list[EventInput] = []
        errors: dict[str, Any] = {}
        for index, item in enumerate(batch.validated_data["events"]):
            one = EventAppendApi.EventInputSerializer(data=item)
            if one.is_valid():
                parsed.append(EventInput(**one.validated_data))
            else:
                errors[str(index)] = one.errors
        if errors:
            raise ValidationFailed("Invalid events; none were written.", details={"events": errors})
        return parsed


# --- preferences -------------------------------------------------------------


class PreferencesOutputSerializer(serializers.Serializer):
    ai_enabled = serializers.BooleanField()
    suggestion_kinds = serializers.ListField(child=serializers.CharField())
    data = serializers.DictField()
    updated_at = serializers.DateTimeField(allow_null=True)


class PreferencesGetApi(APIView):
    @extend_schema(
        operation_id="preferences_retrieve",
        tags=["preferences"],
        responses={200: PreferencesOutputSerializer, **_errors(401)},
    )
    def get(self, request: Request) -> Response:
        return Response(PreferencesOutputSerializer(selectors.preferences_get(user=request.user)).data)


class PreferencesPutApi(APIView):
    class InputSerializer(StrictSerializer):
        ai_enabled = serializers.BooleanField(required=False, default=True)
        suggestion_kinds = serializers.ListField(
            child=serializers.CharField(max_length=64), max_length=50, required=False, default=list
        )
        data = JSONObjectField(required=False, default=dict, max_bytes=16_384)

    @extend_schema(
        operation_id="preferences_update",
        tags=["preferences"],
        request=InputSerializer,
        responses={200: PreferencesOutputSerializer, **_errors(400, 401)},
        description="Replaces the preferences; fields left out return to their defaults.",
    )
    def put(self, request: Request) -> Response:
        data = PreferencesPutApi.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        preference = services.preferences_update(user=request.user, **data.validated_data)
        return Response(PreferencesOutputSerializer(preference).data)


# --- routing classes: one per URL, combining its operations -------------------


class SessionCollectionApi(SessionListApi, SessionCreateApi):
    pass


class SessionItemApi(SessionDetailApi, SessionUpdateApi, SessionDeleteApi):
    pass


class ParticipantCollectionApi(ParticipantListApi, ParticipantAddApi):
    pass


class EventCollectionApi(EventListApi, EventAppendApi):
    pass


class PreferencesApi(PreferencesGetApi, PreferencesPutApi):
    pass
