"""System checks of the ops app, run by ``manage.py check --deploy``.

``/metrics`` shows queue depths, dead-letter counts, task names and cache
figures; with ``METRICS_TOKEN`` empty anyone who reaches the port reads them.
Compose and the Kubernetes manifests set a token; a deployment that does not
(or keeps the manifest's placeholder) fails the deploy check.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register

# The Kubernetes Secret ships this value; it must be replaced like SECRET_KEY.
PLACEHOLDER_PREFIX = "replace-with"
MIN_TOKEN_LENGTH = 32
_HINT = (
    "Set METRICS_TOKEN to a random string (e.g. `openssl rand -hex 32`) and give Prometheus the same value as "
    "its bearer token (docker/k8s/config.yaml, docker-compose.yml)."
)


@register(Tags.security, deploy=True)
def metrics_token_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    token = settings.METRICS_TOKEN
    if not token:
        return [Error("METRICS_TOKEN is empty: /metrics is public.", hint=_HINT, id="ops.E001")]
    if token.startswith(PLACEHOLDER_PREFIX) or len(token) < MIN_TOKEN_LENGTH:
        return [
            Error(
                f"METRICS_TOKEN is the shipped placeholder or shorter than {MIN_TOKEN_LENGTH} characters.",
                hint=_HINT,
                id="ops.E002",
            )
        ]
    return []
