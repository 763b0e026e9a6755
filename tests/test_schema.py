"""The OpenAPI schema matches what the API does, and no generated input gets a 500.

Schemathesis reads ``/api/schema/`` and generates requests (valid and invalid)
for the platform-core operations: auth, sessions, participants, context,
events and preferences. Every answer must be no 5xx, must use a status code the
schema declares, and must match the declared response schema. Bounded: a fixed
number of examples per mode (~20 s).
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from apps.context import services

CORE_PATHS = (
    r"^/api/v1/(auth/token/|preferences/"
    r"|sessions/(\{session_id\}/(participants/(\{username\}/)?|context/|events/)?)?)$"
)
EXAMPLES = int(os.environ.get("SCHEMA_FUZZ_EXAMPLES", "120"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def core_schema(transactional_db):
    app = get_wsgi_application()
    return schemathesis.openapi.from_wsgi("/api/schema/", app).include(path_regex=CORE_PATHS)


def test_schema_is_served_and_lists_every_contract_operation(client):
    schema = client.get("/api/schema/?format=json").json()
    paths = schema["paths"]
    expected = {
        "/api/v1/auth/token/": {"post"},
        "/api/v1/sessions/": {"get", "post"},
        "/api/v1/sessions/{session_id}/": {"get", "patch", "delete"},
        "/api/v1/sessions/{session_id}/participants/": {"get", "post"},
        "/api/v1/sessions/{session_id}/participants/{username}/": {"delete"},
        "/api/v1/sessions/{session_id}/context/": {"get"},
        "/api/v1/sessions/{session_id}/events/": {"get", "post"},
        "/api/v1/preferences/": {"get", "put"},
    }
    for path, methods in expected.items():
        assert set(paths[path]) - {"parameters"} >= methods, path
    assert client.get("/api/docs/").status_code == 200


def test_generated_requests_get_no_500_and_match_the_schema(core_schema, make_user, api_client_for):
    owner = make_user("fuzz_owner")
    make_user("fuzz_friend")
    token = api_client_for(owner)._credentials["HTTP_AUTHORIZATION"]
    state = {"session": services.session_create(owner=owner, title="fuzz")}

    strategy = st.one_of(
        core_schema.as_strategy(GenerationMode.POSITIVE),
        core_schema.as_strategy(GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case) -> None:
        session = state["session"]
        if not type(session).objects.filter(pk=session.pk).exists():  # a DELETE case removed it
            session = state["session"] = services.session_create(owner=owner, title="fuzz")
        positive = getattr(getattr(case.meta, "generation", None), "mode", None) == GenerationMode.POSITIVE
        if positive and case.path_parameters and "session_id" in case.path_parameters:
            case.path_parameters["session_id"] = str(session.pk)
        response = case.call(headers={"Authorization": token})
        case.validate_response(response, checks=CHECKS)

    run()
