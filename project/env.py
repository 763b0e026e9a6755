"""The one way settings read the environment.

Typed helpers that fail loudly: a required variable that is missing raises
``ImproperlyConfigured`` naming it, and a value that does not parse says which
variable and what was expected. A ``.env`` file in the repository root is read
once (without overriding variables already set), so local runs and ``make up``
share one place for overrides; see ``.env.example`` for every variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def _load_dotenv(path: Path) -> None:
    if not path.is_file():
        return
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        name = name.strip().removeprefix("export ").strip()
        value = value.strip().strip('"').strip("'")
        # An empty value means "use the default": libraries that test for a
        # variable's presence (prometheus_client's multiprocess dir) must not see it.
        if value:
            os.environ.setdefault(name, value)


if os.environ.get("CONTEXT_ENGINE_SKIP_DOTENV") != "1":
    _load_dotenv(BASE_DIR / ".env")


def _raw(name: str, default: Any) -> Any:
    value = os.environ.get(name)
    if value is None or value == "":
        if default is REQUIRED:
            raise ImproperlyConfigured(f"Set the environment variable {name} (see .env.example).")
        return default
    return value


def get_str(name: str, default: Any = REQUIRED) -> str:
    return _raw(name, default)


def get_int(name: str, default: Any = REQUIRED) -> int:
    value = _raw(name, default)
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}.") from exc


def get_float(name: str, default: Any = REQUIRED) -> float:
    value = _raw(name, default)
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}.") from exc


def get_bool(name: str, default: Any = REQUIRED) -> bool:
    value = _raw(name, default)
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {value!r}.")


def get_list(name: str, default: Any = REQUIRED) -> list[str]:
    value = _raw(name, default)
    if isinstance(value, list):
        return value
    return [item.strip() for item in str(value).split(",") if item.strip()]


def database_from_url(url: str) -> dict[str, Any]:
    """Turn ``postgres://user:pass@host:port/name?sslmode=require`` into a Django DATABASES entry.

    Parsed by dj-database-url, so query options (``sslmode``, ``sslrootcert``,
    ``options``, ...) reach psycopg as ``OPTIONS``.
    """
    import dj_database_url

    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql", "pgsql"}:
        raise ImproperlyConfigured(f"DATABASE_URL must be a postgres:// URL, got scheme {parts.scheme!r}.")
    if not unquote(parts.path.lstrip("/")):
        raise ImproperlyConfigured(
            "DATABASE_URL must name a database, e.g. postgres://postgres@127.0.0.1:5432/context_engine."
        )
    config = dict(dj_database_url.parse(url, engine="django.db.backends.postgresql"))
    config["PORT"] = str(config.get("PORT") or "")
    config["HOST"] = config.get("HOST") or ""
    return config
