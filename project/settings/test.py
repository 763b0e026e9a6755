"""Test settings: the real services, isolated per test run.

Each pytest run gets its own PostgreSQL test database, RabbitMQ virtual host
and Redis key prefix, named by TEST_RUN_ID (set once by the first process and
inherited by the worker processes the tests start), so concurrent runs on one
machine never consume each other's messages or keys.
"""

import os
from urllib.parse import urlsplit, urlunsplit

from project.settings.base import *
from project.settings.base import BROKER_URL, CACHES, CHANNEL_LAYERS, DATABASES, REST_FRAMEWORK

TEST_RUN_ID = os.environ.setdefault("TEST_RUN_ID", str(os.getpid()))
# Under pytest-xdist each worker is a run of its own (database, vhost, Redis prefix);
# the processes a worker starts inherit both variables and name the same run.
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _XDIST_WORKER and not TEST_RUN_ID.endswith(f"_{_XDIST_WORKER}"):
    TEST_RUN_ID = os.environ["TEST_RUN_ID"] = f"{TEST_RUN_ID}_{_XDIST_WORKER}"

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

DATABASES["default"]["TEST"] = {"NAME": f"test_context_engine_{TEST_RUN_ID}"}
# Tests open and close many connections from threads; do not keep them.
DATABASES["default"]["CONN_MAX_AGE"] = 0

TEST_VHOST = f"ce_test_{TEST_RUN_ID}"


def _with_vhost(url: str, vhost: str) -> str:
    """``url`` with its virtual host replaced; each URL of a failover (``;``-separated) list alike."""
    parts = [urlsplit(part.strip()) for part in url.split(";") if part.strip()]
    return ";".join(urlunsplit((p.scheme, p.netloc, "/" + vhost, "", "")) for p in parts)


# TEST_BROKER_URL, when set, is used verbatim: a test pointing a process at a
# private RabbitMQ node sets it (that node has only the default vhost).
BROKER_URL = os.environ.get("TEST_BROKER_URL") or _with_vhost(BROKER_URL, TEST_VHOST)
CELERY_BROKER_URL = BROKER_URL

REDIS_KEY_PREFIX = f"ce_test_{TEST_RUN_ID}"
CACHES["default"]["KEY_PREFIX"] = REDIS_KEY_PREFIX
CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = f"{REDIS_KEY_PREFIX}:asgi"

# Rate limits are exercised by their own tests with explicit rates.
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {
    **REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
    "user": "100000/min",
    "anon": "100000/min",
    "ip": "100000/min",
    "login": "100000/min",
}
LOG_LEVEL = "WARNING"
