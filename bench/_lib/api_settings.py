"""Settings for bench/api.py only: production settings' middleware, auth and
throttle classes, pointed at a dedicated database, Redis prefix and vhost,
with the bench-only URL conf that adds the bare ``JsonResponse`` baseline."""

import os

from project.settings.base import *  # noqa: F403
from project.settings.base import CACHES, CHANNEL_LAYERS, REST_FRAMEWORK

DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "bench._lib.api_urls"

REDIS_KEY_PREFIX = os.environ.get("REDIS_KEY_PREFIX", "bench_api")
CACHES["default"]["KEY_PREFIX"] = REDIS_KEY_PREFIX
CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = f"{REDIS_KEY_PREFIX}:asgi"

# The throttles stay on (their Redis round trip is part of the measured cost);
# the rates are high enough that the load generator never hits them.
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {
    **REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
    "user": "10000000/min",
    "anon": "10000000/min",
    "ip": "10000000/min",
}
LOG_LEVEL = "WARNING"
LOGGING["root"]["level"] = "WARNING"  # noqa: F405
