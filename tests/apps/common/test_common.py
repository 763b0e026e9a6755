"""apps.common: the error mapping, the JSON parser, strict serializers, schema names."""

from __future__ import annotations

import io
import json

import pytest
from django.test import override_settings
from rest_framework import serializers
from rest_framework.exceptions import ParseError, Throttled

from apps.common.exceptions import (
    ApplicationError,
    Conflict,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    Unprocessable,
    ValidationFailed,
    api_exception_handler,
)
from apps.common.parsers import JSONParser, check_storable
from apps.common.serializers import JSONObjectField, StrictSerializer


@pytest.mark.parametrize(
    "error, status, code",
    [
        (NotFound("x"), 404, "not_found"),
        (PermissionDenied("x"), 403, "permission_denied"),
        (ValidationFailed("x", details={"f": ["bad"]}), 400, "invalid"),
        (Conflict("x", code="session_closed"), 409, "session_closed"),
        (PayloadTooLarge("x"), 413, "payload_too_large"),
        (Unprocessable("x"), 422, "unprocessable"),
        (ApplicationError("x", status_code=418, code="teapot"), 418, "teapot"),
    ],
)
def test_application_errors_map_to_status_and_shape(error, status, code):
    response = api_exception_handler(error, {})
    assert response.status_code == status
    assert response.data == {"code": code, "message": "x", "details": error.details}


def test_drf_errors_get_the_same_shape():
    response = api_exception_handler(serializers.ValidationError({"title": ["required"]}), {})
    assert response.status_code == 400 and response.data["code"] == "invalid"
    assert response.data["details"] == {"title": ["required"]}
    throttled = api_exception_handler(Throttled(wait=12.2), {})
    assert throttled.status_code == 429 and throttled.data["details"] == {"retry_after_seconds": 13}
    assert throttled.headers["Retry-After"] == "13"


def test_unknown_exceptions_are_left_to_django():
    assert api_exception_handler(RuntimeError("boom"), {}) is None


def parse(raw: bytes):
    return JSONParser().parse(io.BytesIO(raw), "application/json", {})


def test_parser_accepts_plain_json():
    assert parse(b'{"a": [1, "x", {"b": null}]}') == {"a": [1, "x", {"b": None}]}


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b'{"a": Infinity}',
        b'{"a": 1e400}',
        b'{"a": -1e999}',
        b"1" * 5000,
        b'"\\u0000"',
        b'{"\\udc00": 1}',
        b"[" * 50_000,
    ],
)
def test_parser_refuses_bad_or_unstorable_json(raw):
    with pytest.raises(ParseError):
        parse(raw)


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=10)
def test_parser_caps_the_body():
    with pytest.raises(PayloadTooLarge):
        parse(json.dumps({"a": "x" * 20}).encode())


def test_depth_limit_counts_containers():
    deep = current = []
    for _ in range(70):
        current.append([])
        current = current[0]
    with pytest.raises(ParseError):
        check_storable(deep)
    check_storable({"a": [{"b": [1]}]})


class Sample(StrictSerializer):
    name = serializers.CharField()
    meta = JSONObjectField(required=False, max_bytes=20)


def test_strict_serializer_rejects_unknown_keys_and_bounds_objects():
    assert Sample(data={"name": "x"}).is_valid()
    unknown = Sample(data={"name": "x", "nmae": "y"})
    assert not unknown.is_valid() and "nmae" in unknown.errors
    assert not Sample(data={"name": "x", "meta": []}).is_valid()
    assert not Sample(data={"name": "x", "meta": {"k": "x" * 30}}).is_valid()


def test_schema_names_nested_serializers_after_their_view():
    from apps.common.schema import AutoSchema
    from apps.context.api import SessionCreateApi, TokenObtainApi

    schema = AutoSchema()
    assert schema.get_serializer_name(SessionCreateApi.InputSerializer(), "request") == "SessionCreateApiInput"
    assert schema.get_serializer_name(TokenObtainApi.InputSerializer(), "request") == "TokenObtainApiInput"


def test_error_pages_are_json_under_api_and_html_elsewhere(rf):
    from apps.common.views import bad_request, page_not_found, server_error

    api = server_error(rf.get("/api/v1/sessions/"))
    assert api.status_code == 500 and json.loads(api.content)["code"] == "server_error"
    assert json.loads(bad_request(rf.get("/api/v1/x/")).content)["code"] == "bad_request"
    assert json.loads(page_not_found(rf.get("/api/v1/x/"), None).content)["code"] == "not_found"
    assert server_error(rf.get("/admin/")).headers["Content-Type"].startswith("text/html")
