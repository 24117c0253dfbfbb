"""Settings, read from the environment (and an optional `.env` beside manage.py)."""

import secrets
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
# A node agent (`manage.py run_node`) signs nothing: it needs no SECRET_KEY, nor a
# database (see DATABASES).
NODE_AGENT_PROCESS = sys.argv[1:2] == ["run_node"]
if not SECRET_KEY and NODE_AGENT_PROCESS:
    SECRET_KEY = secrets.token_urlsafe(50)
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("Set SECRET_KEY (or DEBUG=true for a development key).")
    SECRET_KEY = "development-only-insecure-key"  # noqa: S105

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "accounts",
    "nodes",
    "resources",
    "jobs",
    "events",
    "alerts",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "scheduler_site.middleware.RequestBodyLimitMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "accounts.audit.AuditMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "scheduler_site.urls"

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

WSGI_APPLICATION = "scheduler_site.wsgi.application"

# A node agent (`manage.py run_node`) reaches the control plane through the web API only
# (SCHEDULER_API_URL, with its node key): it has no database at all, so Django's dummy
# backend refuses any query, and the command refuses to start with DATABASE_URL set.
if NODE_AGENT_PROCESS:
    DATABASES = {}
else:
    DATABASES = {
        "default": env.db("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/scheduler"),
    }
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", default=60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # Statements run through common.db.prepared_cursor are prepared from their
    # second run on (Django's own cursors bind on the client and are never prepared).
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("prepare_threshold", 1)
# Where node agents find the web API (`run_node`), e.g. https://scheduler.example.com
SCHEDULER_API_URL = env.str("SCHEDULER_API_URL", default="http://127.0.0.1:8000")

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "common.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "scheduler_site.exceptions.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "common.schema.AutoSchema",
    # Decimal inputs (CPU cores) are JSON numbers; no answer renders a DecimalField.
    "COERCE_DECIMAL_TO_STRING": False,
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_THROTTLE_CLASSES": [
        "accounts.throttling.UserThrottle",
        "accounts.throttling.CredentialThrottle",
        "accounts.throttling.AnonThrottle",
    ],
    # How many proxies in front of the web process append to X-Forwarded-For; with 0 the
    # header is ignored, so a client cannot pick the address it is throttled and audited as.
    "NUM_PROXIES": env.int("API_NUM_PROXIES", default=0),
}

# The largest request body read, in bytes (an argv, env and parameters all fit well
# inside); a larger API request answers 400 before it is parsed.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("API_MAX_BODY_BYTES", default=1024 * 1024)

# The OpenAPI schema at /api/schema/ and its docs at /api/docs/. They are public: they
# describe the API, not anyone's data, and a client needs them before it has a token.
SPECTACULAR_SETTINGS = {
    "TITLE": "Job scheduler API",
    "VERSION": "1.0.0",
    "DESCRIPTION": (
        "Submit jobs (once, on a schedule), follow their attempts and logs, and look at "
        "the cluster's nodes, queues and allocations. Authenticate with "
        "`Authorization: Token <key>` (from `POST /api/auth/login/` or `/api/auth/tokens/`); "
        "node agents use `Authorization: Node <key>`. Errors are 400 with messages per field."
    ),
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # The API speaks JSON; the form parsers only serve the browsable API.
    "PARSER_WHITELIST": ["rest_framework.parsers.JSONParser"],
    # Several models have a "status"; each choice set gets its own name.
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": "jobs.models.JobStatus",
        "ExecutionStatusEnum": "jobs.models.ExecutionStatus",
        "NodeStatusEnum": "nodes.models.NodeStatus",
        "AllocationStatusEnum": "resources.models.AllocationStatus",
        "JobKindEnum": "jobs.models.JobKind",
        "ChannelKindEnum": "alerts.models.ChannelKind",
        "DeliveryKindEnum": "alerts.models.DeliveryKind",
        "DeliveryStatusEnum": "alerts.models.DeliveryStatus",
    },
    "SCHEMA_PATH_PREFIX": "/api/",
}

# Requests allowed per user (all their tokens and sessions together), per credential (an
# API token or a node's), per address without credentials, and login attempts per address.
# "N/second", "N/minute", "N/hour" or "N/day"; empty for no limit. Exceeding one answers
# 429 with Retry-After.
API_THROTTLE_RATES = {
    "user": env.str("API_THROTTLE_USER", default="6000/minute"),
    "token": env.str("API_THROTTLE_TOKEN", default="3600/minute"),
    "anon": env.str("API_THROTTLE_ANON", default="600/minute"),
    "login": env.str("API_THROTTLE_LOGIN", default="30/minute"),
}

# --- Celery (namespace CELERY_) -------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="redis://127.0.0.1:6379/0")


def _cache_url_beside(broker_url: str) -> str:
    """The broker's Redis server, the database after the broker's (14 for a broker on 15)."""
    parts = urlsplit(broker_url)
    broker_db = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{broker_db + 1 if broker_db < 15 else 14}"))


BROKER_IS_REDIS = urlsplit(CELERY_BROKER_URL).scheme in ("redis", "rediss")


def _cache(url: str) -> dict:
    """A Redis cache at `url`; with no Redis at all (`CACHE_URL=locmem://`), each process's
    memory, so that throttles count per process."""
    if urlsplit(url).scheme == "locmem":
        return {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "KEY_PREFIX": "scheduler",
        }
    return {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": url,
        "KEY_PREFIX": "scheduler",
        # A Redis outage must not hang every request (throttles then let requests through).
        "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
    }


# The cache holds only throttle counters: losing it forgets who was near their limit. By
# default it is beside a Redis broker; with RabbitMQ, the local Redis's database 1.
CACHES = {
    "default": _cache(
        env.str(
            "CACHE_URL",
            default=_cache_url_beside(CELERY_BROKER_URL)
            if BROKER_IS_REDIS
            else "redis://127.0.0.1:6379/1",
        )
    )
}
if BROKER_IS_REDIS:
    # Redis without the restore-on-close that kills a worker when Redis restarts (see
    # broker.py). RabbitMQ (amqp://) uses Celery's own transport.
    CELERY_BROKER_TRANSPORT = "scheduler_site.broker:Transport"
# Celery closes Django's connections every 2 * N tasks; close_old_db_connections in
# celery.py applies CONN_MAX_AGE and health checks instead.
CELERY_DB_REUSE_MAX = 1_000_000_000
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "control"
CELERY_TASK_ROUTES = ("resources.routing.route_task",)
# Messages are acknowledged on receipt. PostgreSQL, not the broker, knows what has run:
# a message acknowledged but never claimed is re-published by reconciliation. Late acks
# would only add Redis redeliveries, and with Celery 5.7 a worker holding late-acked
# messages when Redis restarts dies restoring them on the closed connection.
CELERY_TASK_ACKS_LATE = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# After a broker reconnection Celery would lower the prefetch count and raise it again as
# each task is acknowledged, with a basic.qos sent and answered from the pool thread that
# acknowledged, while the consumer thread reads the same AMQP connection: a node agent
# (threads pool) on RabbitMQ then stopped taking messages after a restart. A node's queue
# is its own, so over-fetching after a reconnection costs nothing.
CELERY_WORKER_ENABLE_PREFETCH_COUNT_REDUCTION = False
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
if BROKER_IS_REDIS:
    # For a link to Redis cut without its connections closing (a partition): a consumer
    # waits on its half-open socket until kombu sees its BRPOP unanswered for one second
    # plus the health check interval, and again that at most before it looks (about 11 s
    # rather than kombu's 51); any other command, a publish or the agent's broker watch,
    # gives up after the socket timeout rather than waiting for TCP to retransmit after
    # the link returns; a connect, after the connect timeout.
    _broker_socket_timeout = env.float("BROKER_SOCKET_TIMEOUT_SECONDS", default=10.0)
    CELERY_BROKER_TRANSPORT_OPTIONS |= {
        "health_check_interval": env.int("BROKER_HEALTH_CHECK_SECONDS", default=5),
        "socket_timeout": _broker_socket_timeout,
        "socket_connect_timeout": _broker_socket_timeout,
    }
CELERY_BEAT_SCHEDULER = "jobs.beat:ScheduleBeat"
CELERY_TIMEZONE = "UTC"
# How often beat looks for changed schedules at the latest: a new or changed schedule is
# picked up within this, and a first due time closer than this may fire late.
CELERY_BEAT_MAX_LOOP_INTERVAL = env.float("BEAT_MAX_LOOP_INTERVAL_SECONDS", default=1.0)
# How often reconciliation (re-publishing unclaimed executions, failing over vanished
# processes) and node-loss handling run. The scheduler leader runs both itself, so they
# go on with beat stopped; beat's runs on the control worker are a second, harmless pair.
RECONCILE_INTERVAL_SECONDS = env.float("RECONCILE_INTERVAL_SECONDS", default=10.0)
NODE_LOST_CHECK_SECONDS = env.float("NODE_LOST_CHECK_SECONDS", default=5.0)
# How often the scheduler leader folds ended executions into the metrics' tallies, so a
# scrape reads only the executions since (0: never; a scrape then reads them all).
METRICS_FOLD_SECONDS = env.float("METRICS_FOLD_SECONDS", default=30.0)
# Fair share on past usage (see jobs.services.fair_share): a queue's usage of the last
# days counts, halved every this many days, besides what it holds now. 0: only what
# queues hold now. The scheduler's leader works the shares out every
# FAIR_SHARE_REFRESH_SECONDS (0: never; they stay as they are).
FAIR_SHARE_HALF_LIFE_DAYS = env.float("FAIR_SHARE_HALF_LIFE_DAYS", default=0.0)
FAIR_SHARE_REFRESH_SECONDS = env.float("FAIR_SHARE_REFRESH_SECONDS", default=60.0)
# Maintenance run by beat on the control worker; DatabaseScheduler (which ScheduleBeat
# extends) stores these rows.
CELERY_BEAT_SCHEDULE = {
    "reconcile-executions": {
        "task": "jobs.reconcile_executions",
        "schedule": RECONCILE_INTERVAL_SECONDS,
    },
    "detect-lost-nodes": {
        "task": "nodes.detect_lost_nodes",
        "schedule": NODE_LOST_CHECK_SECONDS,
    },
    "cancel-past-deadline": {
        "task": "jobs.cancel_past_deadline",
        "schedule": env.float("DEADLINE_CHECK_SECONDS", default=5.0),
    },
    "purge-job-logs": {
        "task": "jobs.purge_job_logs",
        "schedule": env.float("JOB_LOG_PURGE_INTERVAL_SECONDS", default=3600.0),
    },
    "purge-jobs": {
        "task": "jobs.purge_jobs",
        "schedule": env.float("JOB_PURGE_INTERVAL_SECONDS", default=300.0),
    },
    "purge-events": {
        "task": "events.purge_events",
        "schedule": env.float("EVENT_PURGE_INTERVAL_SECONDS", default=3600.0),
    },
    "evaluate-alerts": {
        "task": "alerts.evaluate_alerts",
        "schedule": max(1, env.int("ALERT_EVALUATE_SECONDS", default=10)),
    },
}

# --- Scheduler and node agents -------------------------------------------------------
# How often the scheduler runs a cycle when nothing wakes it.
SCHEDULER_TICK_SECONDS = env.float("SCHEDULER_TICK_SECONDS", default=5.0)
# After a wake-up, how long the scheduler gathers further wake-ups into the same cycle.
SCHEDULER_COALESCE_SECONDS = env.float("SCHEDULER_COALESCE_SECONDS", default=0.003)
# When no ready node has room, new arrivals can only be told why they wait: the
# scheduler gathers them for this long, unless something else (room) wakes it first.
SCHEDULER_FULL_COALESCE_SECONDS = env.float("SCHEDULER_FULL_COALESCE_SECONDS", default=0.05)
# How often the leading scheduler looks for busy tables that have changed enough since
# their last ANALYZE (autovacuum's measure) and analyzes them; 0 leaves it to autovacuum.
SCHEDULER_ANALYZE_SECONDS = env.float("SCHEDULER_ANALYZE_SECONDS", default=5.0)
# How many pending jobs one cycle considers.
SCHEDULER_BATCH_SIZE = env.int("SCHEDULER_BATCH_SIZE", default=10_000)
# How often a node agent writes its heartbeat.
NODE_HEARTBEAT_SECONDS = env.float("NODE_HEARTBEAT_SECONDS", default=5.0)
# A reserved execution no node has claimed after this long is published again.
EXECUTION_DISPATCH_TIMEOUT_SECONDS = env.float("EXECUTION_DISPATCH_TIMEOUT_SECONDS", default=30.0)
# Where node agents give each execution a working directory, and keep its log.
NODE_WORK_DIR = Path(env.str("NODE_WORK_DIR", default=str(BASE_DIR / "var" / "work")))
JOB_LOG_DIR = Path(env.str("JOB_LOG_DIR", default=str(BASE_DIR / "var" / "job-logs")))
# How much of a job's output its log file keeps; the rest is counted, not kept.
JOB_LOG_MAX_BYTES = env.int("JOB_LOG_MAX_BYTES", default=10 * 1024 * 1024)
# How much of the end of a job's output is kept in the database.
JOB_LOG_TAIL_BYTES = env.int("JOB_LOG_TAIL_BYTES", default=4096)
# A node whose last heartbeat is older than this is offline; its executions are retried.
NODE_LOST_AFTER_SECONDS = env.float("NODE_LOST_AFTER_SECONDS", default=30.0)
# When at least this share of the nodes, and at least NODE_LOSS_HOLD_MIN_NODES of them,
# are offline or silent for half of NODE_LOST_AFTER_SECONDS, the control plane (or its
# network) is the likelier cause: the silent are failed over one per
# NODE_LOST_AFTER_SECONDS, the longest silent first, rather than all at once (as
# Kubernetes' node controller slows its evictions in a zone that is mostly down).
NODE_LOSS_HOLD_SHARE = env.float("NODE_LOSS_HOLD_SHARE", default=0.55)
NODE_LOSS_HOLD_MIN_NODES = env.int("NODE_LOSS_HOLD_MIN_NODES", default=3)
# When the nodes' heartbeats arrive further apart than twice NODE_HEARTBEAT_SECONDS (the
# median node's last gap), the web server is too busy to serve them in time, or the agents
# beat more slowly than this server expects: NODE_LOST_AFTER_SECONDS is stretched by the
# median gap over twice the interval, at most by this factor, so live nodes are not
# failed over for the control plane's own backlog.
NODE_LOSS_MAX_STRETCH = env.float("NODE_LOSS_MAX_STRETCH", default=10.0)
# How many times one job may be retried because its node or process was lost.
NODE_LOST_MAX_RETRIES = env.int("NODE_LOST_MAX_RETRIES", default=3)
# How often an agent asks which executions to stop (cancelled, preempted, taken away)
# unprompted: the control plane nudges it through its stops queue when there is one, so
# this only bounds the delay when a nudge is lost. And how often it samples its jobs'
# memory.
NODE_CANCEL_POLL_SECONDS = env.float("NODE_CANCEL_POLL_SECONDS", default=30.0)
NODE_MEMORY_POLL_SECONDS = env.float("NODE_MEMORY_POLL_SECONDS", default=0.25)
# Whether an agent puts each job in a control group of its own, which the kernel holds to
# the job's memory and CPU (jobs/agent/cgroups.py): `auto` where the host lets it (root
# with cgroup v1, or cgroup v2 with the memory and cpu controllers delegated to the
# agent), `required` (the agent refuses to start without), or `off` (memory sampled).
NODE_CGROUPS = env.str("NODE_CGROUPS", default="auto")
# The most processes and threads one job may have at once, held by the kernel in the job's
# cgroup where the pids controller is there too (0: no limit), so that a fork bomb in a
# job fails its own forks rather than the node's.
NODE_JOB_PIDS_MAX = env.int("NODE_JOB_PIDS_MAX", default=4096)
# How long a job of GPUs waits for devices that ended jobs of its agent still hold (one
# failed over while its node was cut off, not yet killed) before it is not started.
NODE_GPU_WAIT_SECONDS = env.float("NODE_GPU_WAIT_SECONDS", default=30.0)
# `run_node --hollow N` (simulated nodes that run nothing, for sizing the control plane
# in tests and benchmarks) starts only where this is true: never on a real cluster.
HOLLOW_NODES_ALLOWED = env.bool("HOLLOW_NODES_ALLOWED", default=False)
# A schedule's due time seen later than this (beat was down) is a misfire: its
# misfire policy says whether it still runs (`run_once`) or is skipped (`skip`).
SCHEDULE_MISFIRE_GRACE_SECONDS = env.float("SCHEDULE_MISFIRE_GRACE_SECONDS", default=5.0)
# An interval schedule fired later than this (or a quarter of its interval) gets its beat
# entry lined up with its due times again.
SCHEDULE_REALIGN_AFTER_SECONDS = env.float("SCHEDULE_REALIGN_AFTER_SECONDS", default=0.5)
# Dotted names of the Python callables that `callable` jobs may run.
JOB_CALLABLES = env.list(
    "JOB_CALLABLES", default=["jobs.callables.echo_parameters", "jobs.callables.sleep"]
)
# Seconds a killed job gets between SIGTERM and SIGKILL.
JOB_KILL_GRACE_SECONDS = env.float("JOB_KILL_GRACE_SECONDS", default=5.0)
# Between SIGTERM and SIGKILL for a preempted job (a queue may set its own).
PREEMPTION_GRACE_SECONDS = env.int("PREEMPTION_GRACE_SECONDS", default=30)

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# The bearer token Prometheus sends to read /metrics (`Authorization: Bearer <token>`).
# Empty: /metrics answers only clients on this host that came through no proxy.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")

# How long a token from POST /api/auth/login/ lives.
API_LOGIN_TOKEN_DAYS = env.int("API_LOGIN_TOKEN_DAYS", default=30)

# --- Central logs (jobs.agent.log_shipping, GET /api/jobs/{id}/logs/, GET /api/logs/) ----
# How often a node agent sends what its running jobs printed (an ending job's rest goes
# at once), and how long an ending job waits for its log to be stored before it reports.
JOB_LOG_SHIP_INTERVAL_SECONDS = env.float("JOB_LOG_SHIP_INTERVAL_SECONDS", default=0.5)
JOB_LOG_SHIP_CLOSE_TIMEOUT_SECONDS = env.float("JOB_LOG_SHIP_CLOSE_TIMEOUT_SECONDS", default=10.0)
# How much of one attempt's output the database keeps: past it the oldest is dropped,
# and the log starts with a line saying what was.
JOB_LOG_SHIP_MAX_BYTES = env.int("JOB_LOG_SHIP_MAX_BYTES", default=10 * 1024 * 1024)
# Shipped logs older than this are purged (by beat's purge-job-logs).
JOB_LOG_RETENTION_DAYS = env.float("JOB_LOG_RETENTION_DAYS", default=30.0)
# Jobs and workflows that ended more than this long ago are deleted, with their attempts,
# by beat's purge-jobs (jobs.services.retention); dead letters stay until acknowledged.
# 0 keeps every job. A run stops after JOB_PURGE_BUDGET_SECONDS (the next goes on):
# some 2,400 jobs a second here (bench/retention.py), so every 300 s it keeps up with
# a control plane that ends some 470 jobs a second.
JOB_RETENTION_DAYS = env.float("JOB_RETENTION_DAYS", default=90.0)
JOB_PURGE_BUDGET_SECONDS = env.float("JOB_PURGE_BUDGET_SECONDS", default=60.0)
# How often `?follow=true` looks for a running attempt's new output.
JOB_LOG_FOLLOW_POLL_SECONDS = env.float("JOB_LOG_FOLLOW_POLL_SECONDS", default=0.5)
# A follow still open after this closes (its client follows again), so that followers of
# attempts that never end cannot hold every web thread.
JOB_LOG_FOLLOW_MAX_SECONDS = env.float("JOB_LOG_FOLLOW_MAX_SECONDS", default=3600.0)

# --- Schedules at scale (jobs.beat) ----------------------------------------------------
# How many due schedules beat sends to the control worker in one message.
SCHEDULE_FIRE_BATCH_SIZE = env.int("SCHEDULE_FIRE_BATCH_SIZE", default=10)
# How many due schedules (besides short intervals) beat keeps sent and not yet fired:
# more wait for the control worker to take these, rather than queue in the broker.
SCHEDULE_FIRE_IN_FLIGHT_MAX = env.int("SCHEDULE_FIRE_IN_FLIGHT_MAX", default=20)
# A due time beat sent whose trigger has not run after this long is sent again.
SCHEDULE_FIRE_RESEND_SECONDS = env.float("SCHEDULE_FIRE_RESEND_SECONDS", default=10.0)
# The most due times one backfill of a schedule may submit.
SCHEDULE_BACKFILL_MAX = env.int("SCHEDULE_BACKFILL_MAX", default=100)

# --- Events ---------------------------------------------------------------------------
# Events older than this many days are deleted by the purge beat runs (events.purge_events).
EVENT_RETENTION_DAYS = env.float("EVENT_RETENTION_DAYS", default=30.0)

# --- Alerts ---------------------------------------------------------------------------
# How often beat evaluates the alert rules (and re-queues deliveries whose message is lost),
# in whole seconds: beat's database schedule keeps intervals in whole seconds, and would
# take 0.5 for 0, always due.
ALERT_EVALUATE_SECONDS = max(1, env.int("ALERT_EVALUATE_SECONDS", default=10))
# A notification's attempts: each waits this long for the receiver; failed ones are tried
# again after BACKOFF doubled per attempt (at most CAP), MAX_ATTEMPTS in all.
ALERT_DELIVERY_TIMEOUT_SECONDS = env.float("ALERT_DELIVERY_TIMEOUT_SECONDS", default=5.0)
ALERT_DELIVERY_MAX_ATTEMPTS = env.int("ALERT_DELIVERY_MAX_ATTEMPTS", default=8)
ALERT_DELIVERY_BACKOFF_SECONDS = env.float("ALERT_DELIVERY_BACKOFF_SECONDS", default=5.0)
ALERT_DELIVERY_BACKOFF_CAP_SECONDS = env.float("ALERT_DELIVERY_BACKOFF_CAP_SECONDS", default=600.0)
# Webhooks to link-local addresses (169.254.0.0/16, fe80::/10: cloud metadata services)
# are refused unless this is true.
ALERT_WEBHOOK_ALLOW_LINK_LOCAL = env.bool("ALERT_WEBHOOK_ALLOW_LINK_LOCAL", default=False)
# E-mail notifications go through Django's e-mail backend, by SMTP.
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
EMAIL_USE_SSL = env.bool("EMAIL_USE_SSL", default=False)
EMAIL_TIMEOUT = env.float("EMAIL_TIMEOUT", default=10.0)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="scheduler@localhost")
