"""gunicorn settings for the ``web`` role (docker/entrypoint.sh): HTTP on ``project.wsgi``.

Why gunicorn: bench/results/api.md measures the candidate servers side by side;
Django under WSGI skips the per-request thread hop that ASGI pays for sync
views. WebSockets stay on uvicorn (the ``web-ws`` role) and HAProxy routes
``/ws/`` there. Every value comes from the environment, with the defaults below.
"""

import os

from apps.common.metrics import mark_process_dead

bind = f"{os.environ.get('BIND_HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"  # noqa: S104 - a container's port
worker_class = "gthread"
workers = int(os.environ.get("WEB_WORKERS", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
# SIGTERM: stop accepting, finish in-flight requests for up to this long (HAProxy retries the refused ones).
graceful_timeout = int(os.environ.get("GRACEFUL_SHUTDOWN_SECONDS", "20"))
# A worker stuck this long on one request is replaced.
timeout = int(os.environ.get("WEB_WORKER_TIMEOUT_SECONDS", "60"))
keepalive = 5
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "*")
# Application log lines are Django's (JSON, with the correlation id); gunicorn's own go to stderr.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "warning")


def child_exit(server: object, worker: object) -> None:
    """A worker's Prometheus files stop counting toward live gauges when it exits."""
    mark_process_dead(worker.pid)  # type: ignore[attr-defined]
