#!/bin/sh
# Start one process of the platform by role; `exec` so it is PID 1 and gets
# SIGTERM directly (graceful shutdown):
#   web              HTTP (REST, admin, docs, probes, metrics): gunicorn on project.wsgi
#                    (project/gunicorn.py; bench/results/api.md chose it); in-flight
#                    requests finish within GRACEFUL_SHUTDOWN_SECONDS
#   web-ws           WebSockets: uvicorn on project.asgi; clients get close code 1012
#                    (service restart) and reconnect. HAProxy sends /ws/ here
#   web-asgi         both on one uvicorn process (no HAProxy at hand)
#   web-local        HAProxy in front of web and web-ws on one address (project/serve.py;
#                    make up's web process)
#   worker-*         Celery warm shutdown: running tasks finish; with acks_late a task
#                    cut short by the grace period is redelivered, never lost
#   relay, subscribers, archiver, beat   stop between messages
set -eu

ROLE="${1:-web}"
[ "$#" -gt 0 ] && shift
export CE_ROLE="$ROLE"

# Multi-process Prometheus files belong to this container's processes only: the
# container's first process (PID 1) starts them afresh. Under honcho (make up)
# the Makefile does that once for every process.
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ] && [ "$$" = 1 ]; then
    rm -rf "$PROMETHEUS_MULTIPROC_DIR"
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
fi

case "$ROLE" in
    web)
        exec gunicorn project.wsgi:application --config python:project.gunicorn "$@"
        ;;
    web-ws | web-asgi)
        # WebSocket frames over WS_MAX_FRAME_BYTES are refused (1009) before they are
        # buffered; at most 8 unread frames wait per socket (apps/realtime/__init__.py).
        exec uvicorn project.asgi:application --host "${BIND_HOST:-0.0.0.0}" --port "${PORT:-8000}" \
            --ws websockets --ws-max-size "${WS_MAX_FRAME_BYTES:-98304}" --ws-max-queue 8 \
            --proxy-headers --forwarded-allow-ips "${FORWARDED_ALLOW_IPS:-*}" \
            --timeout-graceful-shutdown "${GRACEFUL_SHUTDOWN_SECONDS:-20}" --no-access-log "$@"
        ;;
    web-local)
        exec python -m project.serve "$@"
        ;;
    worker-realtime)
        # --without-mingle/--without-gossip: no start-up hello broadcast and no gossip
        # between workers; each is a blocking publish that a dead network path can hang
        # (workers/deadletter/watchdog.py). Revocations still reach workers by broadcast.
        exec celery -A project worker -Q ai.realtime -n "realtime@%h" --pool threads \
            --concurrency "${REALTIME_CONCURRENCY:-8}" --without-mingle --without-gossip --loglevel "${LOG_LEVEL:-INFO}" "$@"
        ;;
    worker-batch)
        exec celery -A project worker -Q ai.batch,maintenance -n "batch@%h" \
            --concurrency "${BATCH_CONCURRENCY:-2}" --without-mingle --without-gossip --loglevel "${LOG_LEVEL:-INFO}" "$@"
        ;;
    worker-training)
        exec celery -A project worker -Q ai.training -n "training@%h" --concurrency 1 \
            --without-mingle --without-gossip --loglevel "${LOG_LEVEL:-INFO}" "$@"
        ;;
    relay)
        exec python manage.py run_outbox_relay "$@"
        ;;
    subscribers)
        exec python manage.py run_event_subscribers "$@"
        ;;
    archiver)
        exec python manage.py run_deadletter_archiver "$@"
        ;;
    beat)
        # The schedule lives in PostgreSQL (editable in admin); no local state file.
        exec celery -A project beat -S workers.batch.beat:SingleBeatScheduler \
            --loglevel "${LOG_LEVEL:-INFO}" "$@"
        ;;
    flower)
        # The Celery monitor (opt-in). It shows workers started with TASK_EVENTS=true;
        # --enable_events=False keeps it from switching events on in every worker
        # (the threads-pool realtime worker stalls with them: bench/results/queue.md).
        # No login of its own: bind it to localhost or set FLOWER_BASIC_AUTH.
        exec celery -A project flower --address="${FLOWER_ADDRESS:-0.0.0.0}" --port="${FLOWER_PORT:-5555}" \
            --enable_events=False "$@"
        ;;
    migrate)
        exec python manage.py migrate --noinput "$@"
        ;;
    *)
        exec "$ROLE" "$@"
        ;;
esac
