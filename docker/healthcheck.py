#!/usr/bin/env python
"""Container liveness by role (docker HEALTHCHECK; Kubernetes uses httpGet / exec probes instead).

* web: ``GET /healthz`` on the local port (liveness only: readiness is the
  load balancer's ``/readyz`` check, so a database outage takes instances out
  of rotation without getting them restarted);
* worker-*: this container's Celery node answers ``ping`` (a wedged worker
  whose process is still alive fails it);
* relay, subscribers, archiver, beat: the main process (PID 1) is alive.

Exit 0 when healthy, 1 otherwise.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request

NODE_PREFIX = {"worker-realtime": "realtime", "worker-batch": "batch", "worker-training": "training"}


def check_web() -> bool:
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/healthz"
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - fixed local URL
        return response.status == 200


def check_worker(role: str) -> bool:
    sys.path.insert(0, "/app")
    from project.celery import app

    node = f"{NODE_PREFIX[role]}@{socket.gethostname()}"
    replies = app.control.ping(destination=[node], timeout=5) or []
    return any(node in reply for reply in replies)


def check_process() -> bool:
    os.kill(1, 0)
    return True


def current_role() -> str:
    """The role docker/entrypoint.sh exported to PID 1 (a health check runs with the image's env, not PID 1's)."""
    if os.environ.get("CE_ROLE"):
        return os.environ["CE_ROLE"]
    try:
        with open("/proc/1/environ", "rb") as handle:
            for item in handle.read().split(b"\0"):
                if item.startswith(b"CE_ROLE="):
                    return item.split(b"=", 1)[1].decode()
    except OSError:
        pass
    return "web"


def main() -> int:
    role = current_role()
    try:
        if role == "web":
            healthy = check_web()
        elif role in NODE_PREFIX:
            healthy = check_worker(role)
        else:
            healthy = check_process()
    except Exception as exc:  # noqa: BLE001 - any error is "unhealthy"
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
