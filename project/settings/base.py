"""Settings shared by every environment. Every value comes through project.env.

Long on purpose: every setting of the platform is declared here, once, with its
default and why (tests/test_layout.py checks each has its .env.example line).
"""

from __future__ import annotations

from project import env
from project.env import BASE_DIR

SECRET_KEY = env.get_str("SECRET_KEY", "dev-insecure-secret-key-change-me")
DEBUG = env.get_bool("DEBUG", False)
ALLOWED_HOSTS = env.get_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
# Origins a browser WebSocket may come from (checked at the handshake).
ALLOWED_ORIGINS = env.get_list("ALLOWED_ORIGINS", "http://localhost:8000,http://127.0.0.1:8000")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    # Swagger UI and ReDoc assets served from static files, not a CDN (/api/docs/ works offline).
    "drf_spectacular_sidecar",
    "corsheaders",
    "channels",
    "django_celery_beat",
    "apps.common",
    "apps.context",
    "apps.eventbus",
    "apps.ai",
    "apps.realtime",
    "apps.caching",
    "apps.ops",
    "apps.batch",
]

MIDDLEWARE = [
    # Before anything reads the Host header: /healthz and /readyz answer whatever Host a
    # probe sends (Kubernetes sends the pod IP, which ALLOWED_HOSTS would refuse with 400).
    "apps.ops.middleware.ProbeHostMiddleware",
    # Times the whole request and sets the correlation id every log line carries.
    "apps.ops.middleware.ObservabilityMiddleware",
    # Next: refuses clients over the failed-authentication limits before any work (apps/ops/lockout.py).
    "apps.ops.middleware.AuthLockoutMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files (admin CSS, the playground, Swagger UI) from the web process itself,
    # compressed and cached forever by their hashed names (STATIC_ROOT, built by collectstatic).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # CORS for the REST API: preflights and headers for CORS_ALLOWED_ORIGINS.
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, so its process_exception sees a view's database errors first: 503 + Retry-After, not a 500.
    "apps.common.middleware.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env.get_str("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/context_engine")
# Parsed by dj-database-url: query options such as ?sslmode=require become OPTIONS.
DATABASES = {"default": env.database_from_url(DATABASE_URL)}
# Keep connections for a minute: a new PostgreSQL connection costs ~2 ms, more
# than a snapshot read; health checks drop the ones a restart has broken.
DATABASES["default"]["CONN_MAX_AGE"] = env.get_int("DB_CONN_MAX_AGE", 60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"]["OPTIONS"] = {
    "connect_timeout": env.get_int("DB_CONNECT_TIMEOUT", 5),
    **DATABASES["default"].get("OPTIONS", {}),
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.get_str("REDIS_URL", "redis://127.0.0.1:6379/0")
BROKER_URL = env.get_str("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
# Prefix for every Redis key and channel this deployment owns (tests set a
# per-run prefix so concurrent runs never see each other's keys).
REDIS_KEY_PREFIX = env.get_str("REDIS_KEY_PREFIX", "ce")

# --- Multi-level cache (apps/caching) ----------------------------------------
# Off: every get_or_load calls its loader (the benchmark's baseline).
CACHE_ENABLED = env.get_bool("CACHE_ENABLED", True)
# Its own Redis URL so a fault test can point only the cache at a private Redis.
CACHE_REDIS_URL = env.get_str("CACHE_REDIS_URL", REDIS_URL)
CACHE_L1_MAX_ENTRIES = env.get_int("CACHE_L1_MAX_ENTRIES", 10_000)
# L1 is bounded in bytes too (values' estimated sizes): 10,000 entries of a few
# KiB fit; a few huge ones cannot take the process's memory. A value over the
# whole budget is not kept in L1 (L2 still serves it).
CACHE_L1_MAX_BYTES = env.get_int("CACHE_L1_MAX_BYTES", 64 * 1024 * 1024)
# Upper bound on an L1 entry's life: the staleness bound if a bus message were lost.
CACHE_L1_MAX_TTL = env.get_float("CACHE_L1_MAX_TTL", 30.0)
# Invalidations waiting while Redis is unreachable: distinct keys/tags/patterns kept
# in-process; past it the queue collapses into "clear everything" once Redis is back.
CACHE_PENDING_MAX = env.get_int("CACHE_PENDING_MAX", 10_000)
# Each process reads the invalidation log this often (and when its circuit closes),
# catching up on bus messages it missed; the catch-up bound after an outage.
CACHE_CATCHUP_INTERVAL = env.get_float("CACHE_CATCHUP_INTERVAL", 0.5)
# Entries kept in the invalidation log (a Redis stream); a process further behind clears its L1.
CACHE_LOG_MAX = env.get_int("CACHE_LOG_MAX", 10_000)

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": REDIS_KEY_PREFIX,
        # A stopped Redis must not hang a request: fail fast and let callers degrade.
        "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
    },
}

CHANNEL_LAYERS = {
    "default": {
        # Pub/sub: a group send is one PUBLISH and each web process fans it out
        # to its own sockets (the list-based core layer pays ~4 Redis round trips
        # per member; bench/results/ws.md). Both are at-most-once; clients repair
        # gaps by seq. CHANNEL_LAYER_BACKEND=channels_redis.core.RedisChannelLayer
        # switches back (the benchmark measures both).
        "BACKEND": env.get_str("CHANNEL_LAYER_BACKEND", "channels_redis.pubsub.RedisPubSubChannelLayer"),
        "CONFIG": {
            # socket_timeout None: redis-py 8 otherwise drops idle sockets after
            # 5 s, which kills quiet WebSocket groups (see tests/apps/realtime).
            # max_connections: redis-py 8's async pool caps at 100 and raises (not
            # waits) beyond it; 1,000 sockets connecting at once need more in flight.
            "hosts": [
                {
                    "address": REDIS_URL,
                    "socket_timeout": None,
                    "max_connections": env.get_int("CHANNEL_LAYER_MAX_CONNECTIONS", 1000),
                }
            ],
            "prefix": f"{REDIS_KEY_PREFIX}:asgi",
            # Used by the core layer only (the pub/sub layer ignores them).
            "capacity": 1500,
            "expiry": 60,
        },
    },
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# collectstatic writes here (the image does at build time); WhiteNoise serves it. With
# DEBUG on, WhiteNoise also serves straight from the apps' static folders.
STATIC_ROOT = env.get_str("STATIC_ROOT", str(BASE_DIR / "staticfiles"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Hashed, compressed names once collected (prod.py); plain names otherwise, so the
    # dev server and the tests need no collectstatic.
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Serve from the apps' folders without collectstatic (default: DEBUG).
WHITENOISE_USE_FINDERS = env.get_bool("WHITENOISE_USE_FINDERS", DEBUG)

# CORS (REST only; the WebSocket checks ALLOWED_ORIGINS at its handshake): the same
# origins, so a browser app allowed one is allowed the other.
# "*" (any origin, as ALLOWED_ORIGINS allows for the WebSocket) is CORS's allow-all.
CORS_ALLOW_ALL_ORIGINS = "*" in ALLOWED_ORIGINS
CORS_ALLOWED_ORIGINS = [origin for origin in ALLOWED_ORIGINS if origin != "*"]
CORS_URLS_REGEX = r"^/api/.*$"
CORS_ALLOW_HEADERS = (
    "accept",
    "authorization",
    "content-type",
    "idempotency-key",
    "x-correlation-id",
)
CORS_EXPOSE_HEADERS = ("retry-after", "x-correlation-id")
CORS_PREFLIGHT_MAX_AGE = 600

# API tokens expire this long after they are issued or rotated (0: never); a
# client rotates before then (POST /api/v1/auth/token/rotate/). 30 days.
API_TOKEN_TTL_S = env.get_int("API_TOKEN_TTL_S", 2_592_000)

# Request body cap: larger bodies get 413 before any parsing happens.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.get_int("MAX_BODY_BYTES", 1_048_576)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # DRF's TokenAuthentication answered from the multi-level cache (revocation included).
        "apps.caching.auth.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # Size-capped (413) and refuses what PostgreSQL jsonb cannot store (400).
    "DEFAULT_PARSER_CLASSES": ["apps.common.parsers.JSONParser"],
    # Names nested Input/OutputSerializer components after their view (no collisions).
    "DEFAULT_SCHEMA_CLASS": "apps.common.schema.AutoSchema",
    "EXCEPTION_HANDLER": "apps.common.exceptions.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_THROTTLE_CLASSES": [
        # Per user (per IP when anonymous) and per IP for everyone, in one Redis
        # round trip; fails open if Redis is down.
        "apps.common.throttling.DefaultThrottle",
    ],
    # Throttle counters live in the Redis-backed default cache, so limits hold
    # across every web instance.
    "DEFAULT_THROTTLE_RATES": {
        "user": env.get_str("THROTTLE_USER_RATE", "6000/min"),
        "anon": env.get_str("THROTTLE_ANON_RATE", "120/min"),
        "ip": env.get_str("THROTTLE_IP_RATE", "12000/min"),
        "login": env.get_str("THROTTLE_LOGIN_RATE", "10/min"),
        "dead_letter_replay": env.get_str("THROTTLE_REPLAY_RATE", "30/min"),
        # New AI queries (POST sessions/{id}/suggestions/), per asker and per
        # session: 5/s sustained per person is far above interactive use, and a
        # flood of distinct questions stops there (identical pending ones merge).
        "ai_query_user": env.get_str("THROTTLE_AI_QUERY_USER_RATE", "300/min"),
        "ai_query_session": env.get_str("THROTTLE_AI_QUERY_SESSION_RATE", "600/min"),
        # New automatic AI requests per author (context updates over REST or
        # WebSocket; updates merged into a pending request do not count).
        "ai_auto_user": env.get_str("THROTTLE_AI_AUTO_USER_RATE", "600/min"),
    },
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    # Trusted proxies in front of the web processes (HAProxy: 1); 0 trusts no
    # X-Forwarded-For, so a client cannot pick its own IP for the per-IP limits.
    "NUM_PROXIES": env.get_int("NUM_PROXIES", 0),
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Context Engine API",
    "DESCRIPTION": "Real-time collaborative sessions with AI assistance.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Two choice sets share the field name "role": name both enums explicitly.
    "ENUM_NAME_OVERRIDES": {
        "ParticipantRoleEnum": "apps.context.models.Participant.Role",
        "AddableRoleEnum": [("editor", "Editor"), ("viewer", "Viewer")],
    },
}

# --- Celery (read by project/celery.py with the CELERY_ namespace) ---------
CELERY_BROKER_URL = BROKER_URL
# Task events (task-sent from publishers, received/started/succeeded/... from
# workers) for Flower and `celery events`. Off unless asked for: with them on,
# the realtime worker (threads pool) stalled mid-benchmark (bench/results/queue.md,
# "Task events on/off"); turn them on for prefork workers and publishers only.
TASK_EVENTS = env.get_bool("TASK_EVENTS", False)
CELERY_WORKER_SEND_TASK_EVENTS = TASK_EVENTS
CELERY_TASK_SEND_SENT_EVENT = TASK_EVENTS

# --- Event bus (apps/eventbus) -------------------------------------------------
# Dotted paths of the Subscriber classes a subscriber process runs; empty means
# every subscriber the domain apps register (apps/eventbus/subscribers/__init__.py).
EVENTBUS_SUBSCRIBERS = env.get_list("EVENTBUS_SUBSCRIBERS", [])

# --- AI -------------------------------------------------------------------
AI_DEVICE = env.get_str("AI_DEVICE", "auto")
AI_MAX_BATCH = env.get_int("AI_MAX_BATCH", 32)
AI_MAX_DELAY_MS = env.get_float("AI_MAX_DELAY_MS", 10.0)
# torch intra-op threads per inference process (0: torch's default). One is
# faster on a busy 2-core box: two threads spin-wait on each other and a
# MiniLM pass got 6x slower under load (bench/results/inference.md).
AI_TORCH_THREADS = env.get_int("AI_TORCH_THREADS", 1)
# Load and warm the model when a realtime worker starts (false: on first use).
AI_WARM_ON_START = env.get_bool("AI_WARM_ON_START", True)
# The shared next-action vocabulary (tenant isolation, docs/architecture.md):
# a name is learned and offered to other sessions only once this many distinct
# users performed it, and at most AI_NEXT_ACTION_VOCAB_MAX names are kept.
AI_NEXT_ACTION_MIN_USERS = env.get_int("AI_NEXT_ACTION_MIN_USERS", 3)
AI_NEXT_ACTION_VOCAB_MAX = env.get_int("AI_NEXT_ACTION_VOCAB_MAX", 1000)
# Related-context ranking: "hybrid" (dense + recency + replaced-by-later
# penalty, BM25 for the explanation) or "dense" (plain cosine, the baseline);
# bench/results/quality.md has both on the labelled conversations.
AI_RETRIEVAL_METHOD = env.get_str("AI_RETRIEVAL_METHOD", "hybrid")

# --- Batch jobs (apps/batch; defaults of the job parameters beat sends) ----
# An open session with no activity for this long is closed by session_expiry.
SESSION_IDLE_TIMEOUT_MINUTES = env.get_int("SESSION_IDLE_TIMEOUT_MINUTES", 120)
# Retention: dead letters, published outbox rows and finished job runs older
# than these are deleted by the retention_purge job.
RETENTION_DEAD_LETTER_DAYS = env.get_int("RETENTION_DEAD_LETTER_DAYS", 30)
RETENTION_OUTBOX_DAYS = env.get_int("RETENTION_OUTBOX_DAYS", 7)
RETENTION_PROCESSED_EVENT_DAYS = env.get_int("RETENTION_PROCESSED_EVENT_DAYS", 7)
RETENTION_JOB_RUN_DAYS = env.get_int("RETENTION_JOB_RUN_DAYS", 30)
# AI tables: feedback is training data, kept longest (its suggestion stays with
# it); suggestions without feedback, then finished requests left without
# suggestions, go sooner; embeddings are a cache by content hash (recomputed).
RETENTION_FEEDBACK_DAYS = env.get_int("RETENTION_FEEDBACK_DAYS", 90)
RETENTION_SUGGESTION_DAYS = env.get_int("RETENTION_SUGGESTION_DAYS", 30)
RETENTION_INFERENCE_REQUEST_DAYS = env.get_int("RETENTION_INFERENCE_REQUEST_DAYS", 7)
RETENTION_EMBEDDING_DAYS = env.get_int("RETENTION_EMBEDDING_DAYS", 30)
# Model versions never promoted (one per training round, artifact included);
# promoted and once-promoted versions (rollback targets) are kept.
RETENTION_MODEL_VERSION_DAYS = env.get_int("RETENTION_MODEL_VERSION_DAYS", 30)
# Canary runs (synthetic tasks an operator starts): a week shows recent fleet checks.
RETENTION_CANARY_RUN_DAYS = env.get_int("RETENTION_CANARY_RUN_DAYS", 7)
# Modules whose @register'd jobs the runner, run_job and the jobs API know;
# code, not deployment configuration, so no environment variable.
BATCH_JOB_MODULES = ["workers.batch.jobs", "workers.training.jobs"]

# --- Context limits ---------------------------------------------------------
EVENT_BATCH_MAX = env.get_int("EVENT_BATCH_MAX", 500)
# An Idempotency-Key is remembered this long; retention purges it afterwards.
IDEMPOTENCY_KEY_TTL_S = env.get_int("IDEMPOTENCY_KEY_TTL_S", 24 * 3600)
# A key in_progress is taken over only when its holder is gone (its PostgreSQL
# advisory lock released: apps/context/idempotency.py) and it is this old; a live
# holder keeps it however long it runs (repeats get 409).
IDEMPOTENCY_LOCK_TIMEOUT_S = env.get_int("IDEMPOTENCY_LOCK_TIMEOUT_S", 5)
EVENT_DATA_MAX_BYTES = env.get_int("EVENT_DATA_MAX_BYTES", 65_536)
SNAPSHOT_RECENT_EVENTS = env.get_int("SNAPSHOT_RECENT_EVENTS", 50)
# A page of GET .../events/ stops before it passes this many bytes (estimated
# from the stored JSON; at least one event): 1,000 events of 64 KiB would be 64 MB.
EVENT_PAGE_MAX_BYTES = env.get_int("EVENT_PAGE_MAX_BYTES", 1_048_576)
# Stored events per user per rolling window (REST and WebSocket appends alike;
# 429 beyond, nothing stored; 0: no quota). 100,000 a day is more than one
# event a second around the clock: people and client apps never meet it, a
# runaway script does. Counted in Redis, in 24 buckets of window/24.
EVENT_QUOTA_PER_USER = env.get_int("EVENT_QUOTA_PER_USER", 100_000)
EVENT_QUOTA_WINDOW_S = env.get_int("EVENT_QUOTA_WINDOW_S", 86_400)

# --- Realtime (WebSockets; documented in apps/realtime/__init__.py) ----------
# Largest text frame a client may send; the biggest legal event (64 KiB data) fits.
WS_MAX_FRAME_BYTES = env.get_int("WS_MAX_FRAME_BYTES", 98_304)
# Token bucket per connection: sustained frames/s and burst; WS_RATE_STRIKES refused
# frames before the bucket refills closes the connection (4429).
WS_RATE_PER_SECOND = env.get_float("WS_RATE_PER_SECOND", 20.0)
WS_RATE_BURST = env.get_int("WS_RATE_BURST", 40)
WS_RATE_STRIKES = env.get_int("WS_RATE_STRIKES", 20)
WS_MAX_CONNECTIONS_PER_USER = env.get_int("WS_MAX_CONNECTIONS_PER_USER", 20)
# A resume (or a live gap) longer than this gets resync_required: refetch the snapshot.
WS_RESUME_MAX_EVENTS = env.get_int("WS_RESUME_MAX_EVENTS", 10_000)
WS_REPLAY_PAGE = env.get_int("WS_REPLAY_PAGE", 500)
# ...and a replay page (resume, gap fill) stops before this many bytes, so one
# page of large events never sits whole in the web process (at least one event).
WS_REPLAY_PAGE_MAX_BYTES = env.get_int("WS_REPLAY_PAGE_MAX_BYTES", 1_048_576)
# Revocation: pushes close a revoked socket at once; besides, a socket re-checks its
# token and membership (through the cache) at most this often per frame it serves,
# and on every heartbeat, so a lost push is caught within PRESENCE_HEARTBEAT_S.
WS_ACCESS_RECHECK_S = env.get_float("WS_ACCESS_RECHECK_S", 1.0)
# A send that waits this long (the client stopped reading, its socket buffer is
# full) closes the socket 4408 instead of queueing more for it in this process.
WS_SEND_TIMEOUT_S = env.get_float("WS_SEND_TIMEOUT_S", 5.0)
# Presence: each connection refreshes its entry every HEARTBEAT s; an entry not
# refreshed for TTL s (a dead server process) is swept by any live connection.
PRESENCE_HEARTBEAT_S = env.get_float("PRESENCE_HEARTBEAT_S", 10.0)
# Every web process's event loop sends itself a message through the channel layer this
# often and waits as long for it; when it does not come back, the loop's Redis connections
# are dropped and made again (a black-holed path; apps/realtime/layer_health.py). 0: off.
CHANNEL_LAYER_PROBE_S = env.get_float("CHANNEL_LAYER_PROBE_S", 5.0)
PRESENCE_TTL_S = env.get_float("PRESENCE_TTL_S", 30.0)
TYPING_TTL_S = env.get_float("TYPING_TTL_S", 5.0)
# A worker that dies mid-request must not leave "generating" on forever.
AI_STATE_TTL_S = env.get_int("AI_STATE_TTL_S", 120)

# --- Operations (apps/ops) -------------------------------------------------
# The group holding every ops permission (created by migration ops.0003; see
# apps/ops/permissions.py); `create_api_token USER --staff` adds the user to it.
OPS_OPERATORS_GROUP = "operators"
# A dead-letter replay still pending after this long was cut off before its publish
# (the process died): the next replay request takes it over instead of answering 409.
OPS_REPLAY_PENDING_TIMEOUT_S = env.get_float("OPS_REPLAY_PENDING_TIMEOUT_S", 60.0)
# Per-check timeout of /readyz, seconds: short, so a hung dependency takes the
# instance out of the load balancer quickly instead of hanging the probe.
READINESS_TIMEOUT = env.get_float("READINESS_TIMEOUT", 2.0)
# /readyz serves one result this long (seconds) before checking again, so a burst
# of unauthenticated probes costs one check (apps/ops/health.py); 0: every probe
# not overlapping a running check checks anew. Below HAProxy's 1 s interval.
READINESS_CACHE_SECONDS = env.get_float("READINESS_CACHE_SECONDS", 1.0)
# Failed authentications (apps/ops/lockout.py), per fixed window of this many
# seconds: wrong passwords per username and per client IP, and rejected
# credentials (401 to an Authorization header) per client IP; past them: 429.
AUTH_FAILURE_WINDOW_SECONDS = env.get_int("AUTH_FAILURE_WINDOW_SECONDS", 300)
AUTH_FAILURES_PER_USERNAME = env.get_int("AUTH_FAILURES_PER_USERNAME", 10)
AUTH_FAILURES_PER_IP = env.get_int("AUTH_FAILURES_PER_IP", 30)
# When set, /metrics requires "Authorization: Bearer <token>".
METRICS_TOKEN = env.get_str("METRICS_TOKEN", "")
# RabbitMQ management API base URL (e.g. http://rabbitmq:15672); when set the
# fleet figures take head-message age and rates from it (docs: apps/ops/fleet/figures.py).
RABBITMQ_MANAGEMENT_URL = env.get_str("RABBITMQ_MANAGEMENT_URL", "")
# Scaling advice (apps/ops/fleet/figures.py): the worker count it may advise per queue,
# and, as code rather than deployment configuration, per-queue overrides of the
# latency targets, the service time assumed before any task ran, and the bounds.
OPS_MIN_WORKERS = env.get_int("OPS_MIN_WORKERS", 1)
OPS_MAX_WORKERS = env.get_int("OPS_MAX_WORKERS", 64)
OPS_LATENCY_TARGETS: dict[str, float] = {}
OPS_DEFAULT_SERVICE_SECONDS: dict[str, float] = {}
OPS_WORKER_BOUNDS: dict[str, tuple[int, int]] = {}
# Queues watched besides the work queues and the subscribers' (e.g. a queue another system feeds).
OPS_EXTRA_QUEUES = env.get_list("OPS_EXTRA_QUEUES", [])
# Worker processes serve their own /metrics on this port (0: off).
METRICS_PORT = env.get_int("METRICS_PORT", 0)
# Name reported by /healthz (empty: host:pid).
INSTANCE_NAME = env.get_str("INSTANCE_NAME", "")
# ops.canary in mode "slow" sleeps this long (seconds).
CANARY_SLOW_SECONDS = env.get_float("CANARY_SLOW_SECONDS", 5.0)

LOG_LEVEL = env.get_str("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "apps.common.logging.JsonFormatter"}},
    "filters": {"correlation": {"()": "apps.common.logging.CorrelationIdFilter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["correlation"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "celery": {"level": LOG_LEVEL},
    },
}
