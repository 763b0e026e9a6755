#!/bin/sh
# Start one process of the platform by role; `exec` so it is PID 1 and gets
# SIGTERM directly (graceful shutdown):
#   web              uvicorn finishes in-flight requests (--timeout-graceful-shutdown)
#                    and WebSocket clients get close code 1012 (service restart): reconnect
#   worker-*         Celery warm shutdown: running tasks finish; with acks_late a task
#                    cut short by the grace period is redelivered, never lost
#   relay, subscribers, archiver, beat   stop between messages
set -eu

ROLE="${1:-web}"
[ "$#" -gt 0 ] && shift
export CE_ROLE="$ROLE"

# Multi-process Prometheus files belong to this container's processes only.
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    rm -rf "$PROMETHEUS_MULTIPROC_DIR"
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
fi

case "$ROLE" in
    web)
        # WebSocket frames over WS_MAX_FRAME_BYTES are refused (1009) before they are
        # buffered; at most 8 unread frames wait per socket (apps/realtime/__init__.py).
        exec uvicorn project.asgi:application --host 0.0.0.0 --port "${PORT:-8000}" --ws websockets \
            --ws-max-size "${WS_MAX_FRAME_BYTES:-98304}" --ws-max-queue 8 \
            --proxy-headers --forwarded-allow-ips "${FORWARDED_ALLOW_IPS:-*}" \
            --timeout-graceful-shutdown "${GRACEFUL_SHUTDOWN_SECONDS:-20}" --no-access-log "$@"
        ;;
    worker-realtime)
        exec celery -A project worker -Q ai.realtime -n "realtime@%h" --pool threads \
            --concurrency "${REALTIME_CONCURRENCY:-8}" --loglevel "${LOG_LEVEL:-INFO}" "$@"
        ;;
    worker-batch)
        exec celery -A project worker -Q ai.batch,maintenance -n "batch@%h" \
            --concurrency "${BATCH_CONCURRENCY:-2}" --loglevel "${LOG_LEVEL:-INFO}" "$@"
        ;;
    worker-training)
        exec celery -A project worker -Q ai.training -n "training@%h" --concurrency 1 \
            --loglevel "${LOG_LEVEL:-INFO}" "$@"
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
    migrate)
        exec python manage.py migrate --noinput "$@"
        ;;
    *)
        exec "$ROLE" "$@"
        ;;
esac
