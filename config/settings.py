"""finlock settings: the one settings module, read from the environment.

With nothing configured finlock runs on a SQLite file under ``var/`` with
Celery tasks executed in-process, so a newcomer's first command works on a
bare machine. Set ``DATABASE_URL``, ``CELERY_BROKER_URL`` (or ``REDIS_URL``)
and ``MQTT_URL`` to run on PostgreSQL, Redis and Mosquitto. Every variable is
documented in the README's configuration table.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF
from kombu import Exchange, Queue

from portal.env import (
    ImproperEnvironment,
    env_bool,
    env_float,
    env_int,
    env_keyed_bytes,
    env_list,
    env_networks,
    env_path,
    env_rate,
    env_str,
    env_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = env_path("FINLOCK_VAR_DIR", BASE_DIR / "var")
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", default=True)


def _secret_key() -> str:
    key = env_str("SECRET_KEY")
    if key:
        if not DEBUG and len(key) < 50:
            raise ImproperEnvironment("SECRET_KEY must be at least 50 characters in production")
        return key
    if not DEBUG:
        raise ImproperEnvironment("SECRET_KEY must be set when DEBUG is off")
    # Development only: a random key kept outside the repository so sessions
    # survive a restart of the development server.
    path = VAR_DIR / "dev-secret-key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(64))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperEnvironment("ALLOWED_HOSTS must be set when DEBUG is off")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# Reverse proxies (addresses or CIDR networks) whose X-Forwarded-For is believed: the client's
# address is read from it only when the request comes from one of them (portal/http.py client_ip).
TRUSTED_PROXIES = env_networks("TRUSTED_PROXIES", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "csp",
    "django_filters",
    "phonenumber_field",
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "portal",
    "devices",
    "payments",
    "support",
    "dashboard",
    "selfservice",
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Before the CSRF check, which reads the form: NUL or an unreadable form body is 400, not 500.
    "portal.middleware.InputGuardMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "portal.middleware.TwoFactorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    # django-axes must come last so it sees the outcome of authentication.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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
                "portal.context_processors.navigation",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------
DATABASE_URL = env_url("DATABASE_URL", schemes=("postgres", "postgresql", "sqlite"))
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(VAR_DIR / "finlock.sqlite3"),
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache (rate limits, throttles) -----------------------------------------
REDIS_URL = env_url("REDIS_URL", schemes=("redis", "rediss"))
if REDIS_URL:
    # Rate limits only. While Redis is unavailable each process counts in its own memory
    # (portal/cache.py): a cache outage never refuses a payment.
    CACHES = {
        "default": {
            "BACKEND": "portal.cache.FailoverRedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"FAILOVER_RETRY_SECONDS": 5, "socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Celery -----------------------------------------------------------------
CELERY_BROKER_URL = env_url("CELERY_BROKER_URL", REDIS_URL, schemes=("redis", "rediss", "amqp", "memory"))
# No broker configured: run tasks in-process so a bare machine needs nothing else.
CELERY_TASK_ALWAYS_EAGER = CELERY_BROKER_URL is None
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = env_url("CELERY_RESULT_BACKEND", REDIS_URL, schemes=("redis", "rediss"))
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
# Every periodic job is listed here, and only here (one beat process runs them).
LOCK_SWEEP_SECONDS = env_int("LOCK_SWEEP_SECONDS", 300, minimum=10)
# With REDIS_URL, a routine check-in is answered from a per-device record in Redis
# (devices/checkin_cache.py) kept this long; 0 answers every check-in from the database.
# Check-in times are buffered in Redis and written to the devices every CHECKIN_FLUSH_SECONDS.
CHECKIN_CACHE_SECONDS = env_int("CHECKIN_CACHE_SECONDS", 1800, minimum=0)
CHECKIN_FLUSH_SECONDS = env_int("CHECKIN_FLUSH_SECONDS", 15, minimum=1)
# A process keeps the answer of a phone it answered less than this long ago in memory
# (0: never), for at most CHECKIN_LOCAL_ENTRIES phones, so it need not fetch the record
# again; every such answer is still checked against the device's generation and counted
# in Redis (one small round trip), so it is never older than the Redis record.
CHECKIN_LOCAL_SECONDS = env_float("CHECKIN_LOCAL_SECONDS", 1.0, minimum=0.0, maximum=10.0)
CHECKIN_LOCAL_ENTRIES = env_int("CHECKIN_LOCAL_ENTRIES", 10_000, minimum=1)
# A signed checkpoint of the audit chain head (JSON Lines) is appended here and logged every
# AUDIT_CHECKPOINT_MINUTES, and after every AUDIT_CHECKPOINT_EVENTS new events (0: only
# on the clock). Keep the file, or the logged lines, where the database's users cannot write.
AUDIT_CHECKPOINT_FILE = env_path("AUDIT_CHECKPOINT_FILE", VAR_DIR / "audit-checkpoints.jsonl")
AUDIT_CHECKPOINT_MINUTES = env_int("AUDIT_CHECKPOINT_MINUTES", 5, minimum=1)
AUDIT_CHECKPOINT_EVENTS = env_int("AUDIT_CHECKPOINT_EVENTS", 1000, minimum=0)
# A command row goes this many days after it was issued once its phone acknowledged a newer one
# (the audit trail keeps every change). At least 30: the dashboard's 30-day figures read commands.
COMMAND_RETENTION_DAYS = env_int("COMMAND_RETENTION_DAYS", 30, minimum=30)
CELERY_BEAT_SCHEDULE = {
    "lock-sweep": {"task": "payments.lock_sweep", "schedule": LOCK_SWEEP_SECONDS},
    # Re-queues undelivered device commands whose next attempt is due, so a broker or
    # channel outage loses nothing. "expires": a tick no worker took before the next
    # one is dropped instead of piling up behind a dead worker pool.
    "devices.redeliver-pending": {
        "task": "devices.redeliver_pending",
        "schedule": 30.0,
        "options": {"expires": 25},
    },
    # Buffered device check-in times (devices/checkin_cache.py) into the database.
    "devices.flush-checkins": {
        "task": "devices.flush_checkins",
        "schedule": float(CHECKIN_FLUSH_SECONDS),
        "options": {"expires": CHECKIN_FLUSH_SECONDS},
    },
    # Payments recorded from a receipt that no channel confirmed within the provider's
    # provisional_confirm_days are flagged to finance (payments.ledger.services.payments_flag_unconfirmed).
    "payments.flag-unconfirmed": {
        "task": "payments.flag_unconfirmed_payments",
        "schedule": 3600.0,
        "options": {"expires": 3000},
    },
    # The same for provider webhook events (portal/webhooks.py).
    "portal.redeliver-webhook-events": {
        "task": "portal.redeliver_webhook_events",
        "schedule": 30.0,
        "options": {"expires": 25},
    },
    # Statement imports whose task never reached the broker (it was down at upload), was lost
    # with a restarted Redis, or whose worker died mid-import are queued again (payments/statements/imports.py).
    "payments.requeue-imports": {
        "task": "payments.requeue_imports",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # Lock-screen and offline-lease refreshes whose next batch never reached the broker (or whose
    # worker died) resume from their stored cursor (payments/locks/refresh.py).
    "payments.resume-lock-refreshes": {
        "task": "payments.resume_lock_refreshes",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # Phones' broker accounts not yet in sync with their enrolment (devices/mqtt_accounts.py),
    # e.g. because Mosquitto was down when the phone enrolled. Does nothing without MQTT_PROVISION_URL.
    "devices.sync-mqtt-accounts": {
        "task": "devices.sync_mqtt_accounts",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # Command rows older than COMMAND_RETENTION_DAYS that a newer acknowledged one superseded
    # (devices/services/pruning.py). Daily; a run stops after its budget and the next continues.
    "devices.prune-commands": {"task": "devices.prune_commands", "schedule": 86_400.0, "options": {"expires": 3600}},
    # A signed checkpoint of the audit chain head outside the database (portal/audit.py).
    "portal.audit-checkpoint": {
        "task": "portal.audit_checkpoint",
        "schedule": AUDIT_CHECKPOINT_MINUTES * 60.0,
        "options": {"expires": AUDIT_CHECKPOINT_MINUTES * 60 - 5},
    },
}

# --- MQTT (devices/delivery.py, devices/mqtt_accounts.py, deploy/mosquitto/) --
# MQTT_URL: the broker and finlock's publishing account, mqtt://finlock:<password>@host:1883.
# MQTT_PROVISION_URL: the account that creates phones' accounts through Mosquitto's
# dynamic-security plugin; set, every enrolment answer carries the phone's own MQTT
# credential (username: the device uid; password: HMAC-SHA256 with MQTT_PHONE_PASSWORD_KEY
# over the uid and the phone's credential digest, never stored). Unset (development, an
# anonymous broker): phones get no MQTT credential and connect as before.
MQTT_URL = env_url("MQTT_URL", schemes=("mqtt", "mqtts"))
MQTT_PROVISION_URL = env_url("MQTT_PROVISION_URL", schemes=("mqtt", "mqtts"), credentials=True)
MQTT_PHONE_PASSWORD_KEY = env_str("MQTT_PHONE_PASSWORD_KEY")
if MQTT_PROVISION_URL:
    if not MQTT_URL:
        raise ImproperEnvironment("MQTT_PROVISION_URL needs MQTT_URL (the broker and finlock's publishing account)")
    if not MQTT_PHONE_PASSWORD_KEY or len(MQTT_PHONE_PASSWORD_KEY) < 32:
        raise ImproperEnvironment(
            "MQTT_PHONE_PASSWORD_KEY must be set, at least 32 characters, when MQTT_PROVISION_URL is "
            "(phones' MQTT passwords are derived from it; python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
if MQTT_URL and not DEBUG:
    # Production: the broker must refuse anonymous clients (deploy/mosquitto/finlock.conf), so
    # finlock signs in, and phones get accounts of their own; an anonymous broker lets anyone
    # read every phone's commands and publish forged ones to them.
    env_url("MQTT_URL", schemes=("mqtt", "mqtts"), credentials=True)
    if not MQTT_PROVISION_URL:
        raise ImproperEnvironment(
            "MQTT_PROVISION_URL must be set when DEBUG is off and MQTT_URL is: phones need broker accounts "
            "of their own (see deploy/mosquitto/ and ./dev mqtt_setup)"
        )

# --- Command delivery (devices/delivery.py) ----------------------------------
# A failed push round is retried after min(cap, base * 2**(n-1)) seconds times a
# random 0.5..1.5, and dead-lettered (shown in the portal) after MAX_ATTEMPTS rounds.
DELIVERY_BACKOFF_BASE_SECONDS = env_int("DELIVERY_BACKOFF_BASE_SECONDS", 10, minimum=1)
DELIVERY_BACKOFF_CAP_SECONDS = env_int("DELIVERY_BACKOFF_CAP_SECONDS", 3600, minimum=1)
DELIVERY_MAX_ATTEMPTS = env_int("DELIVERY_MAX_ATTEMPTS", 12, minimum=1)
DELIVERY_WEBHOOK_TIMEOUT_SECONDS = env_int("DELIVERY_WEBHOOK_TIMEOUT_SECONDS", 10, minimum=1)
MQTT_PUBLISH_TIMEOUT_SECONDS = env_int("MQTT_PUBLISH_TIMEOUT_SECONDS", 10, minimum=1)

# --- Task queues and time limits ----------------------------------------------
# Three queues: "unlocks" for the commands that give a phone back (unlock, release, temporary
# unlock: devices.deliver_unlock, chosen per command state by devices/delivery.py), "celery" for
# locks, reminders, lock-screen refreshes, webhooks and the periodic jobs, and "imports" for
# statement imports only. So neither a long import nor 100,000 queued locks can hold up an
# unlock. Production runs one worker per queue (`celery -A config worker -Q unlocks`,
# `... -Q celery` and `... -Q imports`); a worker started without -Q consumes all three.
# Each queue has its own exchange and routing key: a Queue given by name alone is bound to the
# default exchange with the default key, and then every message lands in every queue.
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_QUEUES = (
    Queue("celery", Exchange("celery", type="direct"), routing_key="celery"),
    Queue("imports", Exchange("imports", type="direct"), routing_key="imports"),
    Queue("unlocks", Exchange("unlocks", type="direct"), routing_key="unlocks"),
)
CELERY_TASK_ROUTES = {
    "payments.import_statement": {"queue": "imports"},
    "devices.deliver_unlock": {"queue": "unlocks"},
}
# Every task has a soft limit (it receives SoftTimeLimitExceeded and ends in a consistent
# state) and a hard one (the worker kills the process). Enforced by the prefork pool, the
# worker's default; `--pool solo` and `threads` ignore them.
TASK_TIME_LIMIT_SECONDS = env_int("TASK_TIME_LIMIT_SECONDS", 120, minimum=1)
CELERY_TASK_SOFT_TIME_LIMIT = TASK_TIME_LIMIT_SECONDS
CELERY_TASK_TIME_LIMIT = TASK_TIME_LIMIT_SECONDS + 30
# One statement import; a 50 MiB file imports in about two minutes on the benchmark machine.
# An import that reaches it ends "failed" with the reason; the lines stored before it are kept.
STATEMENT_IMPORT_TIME_LIMIT_SECONDS = env_int("STATEMENT_IMPORT_TIME_LIMIT_SECONDS", 900, minimum=1)
STATEMENT_IMPORT_HARD_LIMIT_SECONDS = STATEMENT_IMPORT_TIME_LIMIT_SECONDS + 60
# A push may wait for MQTT and then for the provider's gateway: tighter than the default,
# so a hung channel frees the worker soon; the command stays pending and is retried.
_PUSH_LIMIT = MQTT_PUBLISH_TIMEOUT_SECONDS + DELIVERY_WEBHOOK_TIMEOUT_SECONDS + 20
CELERY_TASK_ANNOTATIONS = {
    "payments.import_statement": {
        "soft_time_limit": STATEMENT_IMPORT_TIME_LIMIT_SECONDS,
        "time_limit": STATEMENT_IMPORT_HARD_LIMIT_SECONDS,
    },
    # Looser: a million contracts take tens of seconds; each batch is its own transaction and
    # the next sweep continues where a stopped one left off.
    "payments.lock_sweep": {"soft_time_limit": 900, "time_limit": 960},
    "devices.deliver_command": {"soft_time_limit": _PUSH_LIMIT, "time_limit": _PUSH_LIMIT + 15},
    "devices.deliver_unlock": {"soft_time_limit": _PUSH_LIMIT, "time_limit": _PUSH_LIMIT + 15},
    "portal.deliver_webhook_event": {
        "soft_time_limit": DELIVERY_WEBHOOK_TIMEOUT_SECONDS + 20,
        "time_limit": DELIVERY_WEBHOOK_TIMEOUT_SECONDS + 35,
    },
}

# --- Device command signing (docs/lock-pipeline.md, "Keys and rotation") -----
# DEVICE_SIGNING_KEY=<key_id>:<base64 32-byte Ed25519 seed> signs every command.
# The previous key's (and an announced key's) public half stays in DEVICE_SIGNING_PUBLIC_KEYS
# so phones still accept commands signed before a rotation. `manage.py device_signing_key` prints
# a fresh key and the public half of the current one.
_signing_keys = env_keyed_bytes("DEVICE_SIGNING_KEY", length=32)
if len(_signing_keys) > 1:
    raise ImproperEnvironment(
        "DEVICE_SIGNING_KEY holds exactly one key; list other trusted ones in DEVICE_SIGNING_PUBLIC_KEYS"
    )
if not _signing_keys and not DEBUG:
    # A generated key in production would change on every new host and phones
    # would reject every command it signed: refuse to start instead.
    raise ImproperEnvironment(
        "DEVICE_SIGNING_KEY must be set when DEBUG is off "
        "(create one with: DEBUG=1 python manage.py device_signing_key --generate <key_id>)"
    )
# (key_id, seed), or None: devices.keys then generates a development key into the file below.
DEVICE_SIGNING_KEY = next(iter(_signing_keys.items()), None)
DEVICE_SIGNING_PUBLIC_KEYS = env_keyed_bytes("DEVICE_SIGNING_PUBLIC_KEYS", length=32)
DEVICE_SIGNING_KEY_FILE = VAR_DIR / "device-signing-key"
# DEVICE_SIGNING_RETIRED_KEYS=<key_id>,... names the keys the next key statement may drop (one merely
# missing from a process's configuration, a worker not restarted yet, is never dropped).
DEVICE_SIGNING_RETIRED_KEYS = frozenset(env_list("DEVICE_SIGNING_RETIRED_KEYS"))
for _id in sorted(DEVICE_SIGNING_RETIRED_KEYS):
    if _id in {*_signing_keys, *DEVICE_SIGNING_PUBLIC_KEYS} or not re.fullmatch(r"[\w.-]{1,40}", _id, re.ASCII):
        raise ImproperEnvironment(f"DEVICE_SIGNING_RETIRED_KEYS lists ids of keys no longer configured; not {_id!r}")

# --- Audit trail keys and checkpoints (portal/audit_keys.py, README "Security model") ---
# AUDIT_HMAC_KEY=<key_id>:<base64 32 bytes> keys every new audit event's hash (HMAC-SHA256),
# the chain head and the checkpoints; it lives only in finlock's environment, never in the
# database. Keys of earlier rotations stay in AUDIT_HMAC_RETIRED_KEYS so their events verify.
_audit_keys = env_keyed_bytes("AUDIT_HMAC_KEY", length=32)
if len(_audit_keys) > 1:
    raise ImproperEnvironment("AUDIT_HMAC_KEY holds exactly one key; list retired ones in AUDIT_HMAC_RETIRED_KEYS")
if not _audit_keys and not DEBUG:
    # A generated key in production would differ per host and leave the trail unverifiable.
    raise ImproperEnvironment(
        "AUDIT_HMAC_KEY must be set when DEBUG is off "
        "(create one with: DEBUG=1 python manage.py audit_hmac_key --generate <key_id>)"
    )
# (key_id, key), or None: portal.audit_keys then generates a development key into the file below.
AUDIT_HMAC_KEY = next(iter(_audit_keys.items()), None)
AUDIT_HMAC_RETIRED_KEYS = env_keyed_bytes("AUDIT_HMAC_RETIRED_KEYS", length=32)
if AUDIT_HMAC_KEY and AUDIT_HMAC_KEY[0] in AUDIT_HMAC_RETIRED_KEYS:
    raise ImproperEnvironment(
        f"AUDIT_HMAC_RETIRED_KEYS must not list the current key id {AUDIT_HMAC_KEY[0]!r}; give a new key a new id"
    )
AUDIT_HMAC_KEY_FILE = VAR_DIR / "audit-hmac-key"

# --- Auth and login hardening -----------------------------------------------
AUTH_USER_MODEL = "portal.User"
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "portal:login"
LOGIN_REDIRECT_URL = "portal:home"
LOGOUT_REDIRECT_URL = "portal:login"

AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = env_int("AXES_COOLOFF_MINUTES", 30, minimum=1) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "portal/locked_out.html"
AXES_ENABLED = env_bool("AXES_ENABLED", True)
# The same client address as every other limit and the audit trail (TRUSTED_PROXIES).
AXES_CLIENT_IP_CALLABLE = "portal.http.client_ip"

OTP_TOTP_ISSUER = "finlock"
# The Django admin never shows an authenticator's key or QR code: whoever holds it passes two-factor.
OTP_ADMIN_HIDE_SENSITIVE_DATA = True

# Four eyes (portal/four_eyes.py): account set-ups (create, set-password link, re-activation, role
# change, a password set in the Django admin) of this many days link two accounts as possibly one person.
FOUR_EYES_LOOKBACK_DAYS = env_int("FOUR_EYES_LOOKBACK_DAYS", 30, minimum=1)

# Idle sessions expire: every request renews the cookie, so SESSION_COOKIE_AGE
# is the idle timeout; closing the browser ends the session too.
SESSION_COOKIE_AGE = env_int("SESSION_IDLE_MINUTES", 30, minimum=1) * 60
SESSION_SAVE_EVERY_REQUEST = True
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"

# --- Production hardening (manage.py check --deploy is clean with DEBUG=0) --
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
SECURE_CONTENT_TYPE_NOSNIFF = True
# Content Security Policy: only our own scripts, styles and images; no framing.
# Inline style attributes are allowed for the API docs page (Swagger UI sets them).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, "'unsafe-inline'"],
        "img-src": [SELF, "data:"],
        "object-src": [NONE],
        "base-uri": [SELF],
        "frame-ancestors": [NONE],
        "form-action": [SELF],
    }
}
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# --- I18N / time ------------------------------------------------------------
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("si", "Sinhala"), ("sw", "Swahili"), ("ta", "Tamil")]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
PHONENUMBER_DB_FORMAT = "E164"
PHONENUMBER_DEFAULT_FORMAT = "E164"

# --- Static and media -------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

MEDIA_ROOT = VAR_DIR / "private"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# --- REST API ---------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["portal.api.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["portal.api.permissions.IsProviderClient"],
    "DEFAULT_SCHEMA_CLASS": "portal.api.schema.AutoSchema",  # documents the error responses too
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.CursorPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_THROTTLE_CLASSES": ["portal.api.throttling.ApiKeyRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"api_key": env_str("API_RATE_LIMIT", "600/min")},
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "portal.api.parsers.JSONParser",  # bounded in size and depth
        "rest_framework.parsers.MultiPartParser",
    ],
    "EXCEPTION_HANDLER": "portal.api.exceptions.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "finlock API",
    "DESCRIPTION": (
        "Provider API for financed-phone locks. Authenticate with a per-provider key: "
        "`Authorization: Bearer <key>` (create one with `python manage.py create_api_key <provider-slug>`). "
        "Every object is scoped to the key's provider; another provider's object is 404."
    ),
    "VERSION": "1.0.0",
    # 3.1: its top-level `webhooks` describe what finlock POSTs to a provider's systems, and its
    # schemas are JSON Schema 2020-12 (receivers validate event bodies with any JSON Schema library).
    "OAS_VERSION": "3.1.0",
    "WEBHOOKS": [
        "payments.api.webhooks.PAYMENT_MATCHED",
        "devices.api.webhooks.DEVICE_LOCKED",
        "devices.api.webhooks.DEVICE_UNLOCKED",
        "devices.api.webhooks.GATEWAY_COMMAND",
    ],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",  # the default, kept
        "portal.api.webhook_schema.add_signing_headers",
    ],
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    # The phone calls have their own document at /api/device/v1/schema/ (devices/api/device_schema.py).
    "PREPROCESSING_HOOKS": ["devices.api.device_schema.without_device_api"],
    # Swagger UI served from our own static files (no CDN; works offline and under CSP).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "LockStateEnum": "devices.models.LockState",
        "ContractStatusEnum": "payments.models.ContractStatus",
        "FrequencyEnum": "payments.models.Frequency",
    },
}

# Device API (/api/device/v1/): requests per device (check-in, ack) and enrolments per client address.
DEVICE_API_RATE = env_rate("DEVICE_API_RATE", "120/min")
DEVICE_ENROLL_RATE = env_rate("DEVICE_ENROLL_RATE", "60/min")
# Enrolment proofs (docs/lock-pipeline.md, "Enrolment"): how long a challenge from
# POST enroll/challenge may be signed and used, and how long a re-enrolment code staff
# issue for a phone that lost its device key stays usable (once).
DEVICE_ENROLL_CHALLENGE_SECONDS = env_int("DEVICE_ENROLL_CHALLENGE_SECONDS", 300, minimum=30)
DEVICE_REENROLL_CODE_MINUTES = env_int("DEVICE_REENROLL_CODE_MINUTES", 30, minimum=1)

# Bulk device upload: the largest CSV accepted in one request.
BULK_UPLOAD_MAX_ROWS = env_int("BULK_UPLOAD_MAX_ROWS", 100_000, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 10 * 1024 * 1024, minimum=1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = DATA_UPLOAD_MAX_MEMORY_SIZE
BULK_UPLOAD_MAX_BYTES = env_int("BULK_UPLOAD_MAX_BYTES", 20 * 1024 * 1024, minimum=1024)
# Payment proofs (receipts, screenshots) an agent uploads: the largest file accepted.
PROOF_MAX_BYTES = env_int("PROOF_MAX_BYTES", 10 * 1024 * 1024, minimum=1024)

# Tests and CI: FINLOCK_REQUIRE_SERVICES=1 turns a skipped service test into a failure.
FINLOCK_REQUIRE_SERVICES = env_bool("FINLOCK_REQUIRE_SERVICES", False)

# Every handler masks secrets (the M-Pesa callbacks' ?key=, API keys, device credentials,
# enrolment tokens): portal/log_filters.py. gunicorn.conf.py does the same for gunicorn's logs.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "redact_secrets": {"()": "portal.log_filters.RedactSecrets"},
        # A 4xx (PermissionDenied, a malformed request) logs its line, not a traceback.
        "client_errors": {"()": "portal.log_filters.ClientErrorsWithoutTraceback"},
    },
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "django.server": {
            "()": "django.utils.log.ServerFormatter",
            "format": "[{server_time}] {message}",
            "style": "{",
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["client_errors", "redact_secrets"],
        },
        # runserver's access log (the request line, query string included).
        "django.server": {
            "class": "logging.StreamHandler",
            "formatter": "django.server",
            "filters": ["redact_secrets"],
        },
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "axes": {"level": "WARNING"},
        # Django's own handlers (console in DEBUG, mail_admins) replaced by ours, which redact.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.server": {"handlers": ["django.server"], "level": "INFO", "propagate": False},
    },
}
