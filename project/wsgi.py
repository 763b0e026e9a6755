"""WSGI entry point: the REST API, admin, docs, probes and metrics (everything but ``/ws/``).

``make up`` and the web image serve HTTP with gunicorn on this application and
WebSockets with uvicorn on ``project.asgi``, behind one HAProxy frontend that
sends ``/ws/`` to the latter (docker/haproxy.cfg; bench/results/api.md has the
measurements that chose it). ``project.asgi`` still serves HTTP too, for a
single-process run.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.dev")

django_wsgi_app = get_wsgi_application()

from apps.common.wsgi import BodySizeLimitMiddleware  # noqa: E402

# 413 before Django reads an oversized body, as under ASGI.
application = BodySizeLimitMiddleware(django_wsgi_app)
