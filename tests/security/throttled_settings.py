"""The test settings with the production-shaped per-user and per-IP rates restored from the environment.

``project.settings.test`` lifts every rate to 100000/min so ordinary tests are
never throttled; a server started with this module (``start_web(
DJANGO_SETTINGS_MODULE="tests.security.throttled_settings", THROTTLE_USER_RATE=...)``)
enforces the rates a test names.
"""

from project.env import get_str
from project.settings.test import *  # noqa: F403 - a settings module extends another whole
from project.settings.test import REST_FRAMEWORK

REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {
    **REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
    "user": get_str("THROTTLE_USER_RATE", "6000/min"),
    "ip": get_str("THROTTLE_IP_RATE", "12000/min"),
}
