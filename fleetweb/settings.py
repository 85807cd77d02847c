"""Fleetweb settings: one environment-driven module that fails loudly on bad configuration."""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured
from limits import parse as _parse_rate

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("FLEET_VAR_DIR", BASE_DIR / "var"))


def env(name: str, default: str | None = None) -> str | None:
    """Read NAME, or the contents of NAME_FILE (for secrets)."""
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE: cannot read {file_name}: {exc.strerror}") from None
    return os.environ.get(name, default)


def envbool(name: str, default: str) -> bool:
    value = (env(name, default) or "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}")


def envint(name: str, default: int) -> int:
    value = env(name, str(default))
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(f"{name} must be an integer, not {value!r}") from None


DEBUG = envbool("DEBUG", "false")
SECRET_KEY = env("SECRET_KEY")
if not SECRET_KEY:
    # A stable development key kept under var/, so sessions survive restarts.
    key_file = VAR_DIR / "secret_key"
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    if not key_file.exists():
        import secrets

        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    SECRET_KEY = key_file.read_text().strip()
elif len(SECRET_KEY) < 32:
    raise ImproperlyConfigured("SECRET_KEY must be at least 32 characters long")

FLEET_PUBLIC_URL = (env("FLEET_PUBLIC_URL", "http://127.0.0.1:8000") or "").rstrip("/")
_public = urlparse(FLEET_PUBLIC_URL)
if _public.scheme not in ("http", "https") or not _public.netloc:
    raise ImproperlyConfigured(f"FLEET_PUBLIC_URL must be an http(s) URL, not {FLEET_PUBLIC_URL!r}")

# The hosts this server answers for: the public URL's host and loopback unless FLEET_ALLOWED_HOSTS
# (or ALLOWED_HOSTS) says otherwise (never "*" by default: the dashboard websocket's origin check
# relies on it).
ALLOWED_HOSTS = [h.strip() for h in (env("FLEET_ALLOWED_HOSTS") or env("ALLOWED_HOSTS") or "").split(",")
                 if h.strip()] or [
    _public.hostname, "localhost", "127.0.0.1", "[::1]"]
CSRF_TRUSTED_ORIGINS = [f"{_public.scheme}://{_public.netloc}"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "fleetweb.core",
    "fleetweb.tenancy",
    "fleetweb.updates",
    "fleetweb.fleet",
    "fleetweb.reboots",
    "fleetweb.builds",
    "fleetweb.cloudconfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "fleetweb.tenancy.middleware.OrganizationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "fleetweb.urls"
ASGI_APPLICATION = "fleetweb.asgi.application"

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
                "fleetweb.core.context_processors.organization",
            ],
        },
    }
]

# Database: SQLite under var/ unless DATABASE_URL says otherwise.
import dj_database_url  # noqa: E402

DATABASE_URL = env("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'fleetweb.sqlite3'}"
try:
    # Persistent connections: opening one per call was 8-11 % of the server's time under load.
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=envint("CONN_MAX_AGE", 60),
                                                  conn_health_checks=True)}
except Exception as exc:  # dj_database_url raises several types
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE",
         "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}
    )
    # Tests that run a real server next to pytest need the test database in a file.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Redis: the channel layer, the per-process agent hub and the Celery broker.
REDIS_URL = env("REDIS_URL") or None
# Prefix of every key Fleetweb keeps in Redis (several deployments may share one server).
FLEET_REDIS_PREFIX = env("FLEET_REDIS_PREFIX", "fleetweb") or "fleetweb"
if REDIS_URL and urlparse(REDIS_URL).scheme not in ("redis", "rediss", "unix"):
    raise ImproperlyConfigured(f"REDIS_URL must be a redis:// URL, not {REDIS_URL!r}")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "max_connections": 1000, "socket_timeout": 30}],
                "prefix": FLEET_REDIS_PREFIX + ":asgi",
                "capacity": 1000,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
FLEET_HUB_CHANNEL = FLEET_REDIS_PREFIX + ":hub"

# Concurrency inside one web process (fleetweb/core/lanes.py): threads for views (each keeps its
# database connection) and how many password hashes may run at once.
FLEET_WEB_THREADS = envint("FLEET_WEB_THREADS", 8)
FLEET_PASSWORD_HASH_CONCURRENCY = envint("FLEET_PASSWORD_HASH_CONCURRENCY", 1)
# Sign-ins that may wait for a hash slot (on the event loop, holding no request lane); more are
# answered 429 at once.
FLEET_LOGIN_QUEUE = envint("FLEET_LOGIN_QUEUE", 32)

CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = REDIS_URL is None
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_SOFT_TIME_LIMIT = 300
CELERY_TASK_DEFAULT_QUEUE = env("CELERY_TASK_DEFAULT_QUEUE", "fleetweb") or "fleetweb"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "reap-offline-hosts": {"task": "fleetweb.fleet.tasks.reap_offline_hosts", "schedule": 15.0},
    "advance-rollouts": {"task": "fleetweb.updates.tasks.advance_rollouts", "schedule": 5.0},
    "sweep-payload-store": {"task": "fleetweb.updates.tasks.sweep_payload_store", "schedule": 3600.0},
    "reap-builds": {"task": "fleetweb.builds.tasks.reap_builds", "schedule": 60.0},
}

# etcd (reboot semaphore, cluster config). Unset: no etcd.
ETCD_ENDPOINTS = [e.strip() for e in (env("ETCD_ENDPOINTS", "") or "").split(",") if e.strip()]
for _endpoint in ETCD_ENDPOINTS:
    if urlparse(_endpoint).scheme not in ("http", "https") or not urlparse(_endpoint).port:
        raise ImproperlyConfigured(f"ETCD_ENDPOINTS must be http(s)://host:port entries, not {_endpoint!r}")
# Root credentials the server uses to provision one etcd user + role per organization (auth enabled);
# TLS: a CA to verify etcd, and optionally a client certificate and key (both or neither).
ETCD_USERNAME = env("ETCD_USERNAME") or None
ETCD_PASSWORD = env("ETCD_PASSWORD") or None
if bool(ETCD_USERNAME) != bool(ETCD_PASSWORD):
    raise ImproperlyConfigured("ETCD_USERNAME and ETCD_PASSWORD (or ETCD_PASSWORD_FILE) go together: set both or neither")
ETCD_CA_FILE = env("ETCD_CA_FILE") or None
ETCD_CERT_FILE = env("ETCD_CERT_FILE") or None
ETCD_KEY_FILE = env("ETCD_KEY_FILE") or None
for _name in ("ETCD_CA_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE"):
    _value = globals()[_name]
    if _value and not Path(_value).is_file():
        raise ImproperlyConfigured(f"{_name}: {_value} is not a readable file")
if bool(ETCD_CERT_FILE) != bool(ETCD_KEY_FILE):
    raise ImproperlyConfigured("ETCD_CERT_FILE and ETCD_KEY_FILE go together: set both or neither")
if (ETCD_CA_FILE or ETCD_CERT_FILE) and any(urlparse(e).scheme != "https" for e in ETCD_ENDPOINTS):
    raise ImproperlyConfigured("ETCD_CA_FILE/ETCD_CERT_FILE need https:// ETCD_ENDPOINTS")
if any(urlparse(e).scheme == "https" for e in ETCD_ENDPOINTS) and not ETCD_CA_FILE:
    raise ImproperlyConfigured("https:// ETCD_ENDPOINTS need ETCD_CA_FILE (the CA that signed etcd's certificate)")

FLEET_MEDIA_ROOT = Path(env("FLEET_MEDIA_ROOT") or VAR_DIR / "media")
MEDIA_ROOT = FLEET_MEDIA_ROOT
MEDIA_URL = "/media/"

# Release signing keys are encrypted at rest with this key (default: derived from SECRET_KEY).
FLEET_ENCRYPTION_KEY = env("FLEET_ENCRYPTION_KEY") or None
# Payload download URLs are per host and expire after this many seconds.
FLEET_PAYLOAD_URL_TTL = envint("FLEET_PAYLOAD_URL_TTL", 3600)

# Agents: heartbeat interval pushed in policy; a host silent for HEARTBEAT*3 is offline.
FLEET_HEARTBEAT_INTERVAL = envint("FLEET_HEARTBEAT_INTERVAL", 30)
FLEET_OFFLINE_AFTER = envint("FLEET_OFFLINE_AFTER", FLEET_HEARTBEAT_INTERVAL * 3)
# Hosts without an agent (stock update_engine speaking Omaha) check every 45 min or so: such a host
# is online until it has missed about two checks.
FLEET_OMAHA_OFFLINE_AFTER = envint("FLEET_OMAHA_OFFLINE_AFTER", 7200)

# --- Security (issue 9). One block per area, so that each can change alone. ----------------------
# login and API-key throttling, password policy (django-axes)
# django-axes locks out an address, or a username, after FLEET_LOGIN_FAILURE_LIMIT failed logins for
# FLEET_LOGIN_COOLOFF seconds; its backend runs first, so a locked-out attempt never reaches the
# password hasher.  Counts live in the database: every web process sees them.
INSTALLED_APPS += ["axes"]
MIDDLEWARE += ["axes.middleware.AxesMiddleware"]
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = envint("FLEET_LOGIN_FAILURE_LIMIT", 5)
FLEET_LOGIN_COOLOFF = envint("FLEET_LOGIN_COOLOFF", 900)
AXES_COOLOFF_TIME = timedelta(seconds=FLEET_LOGIN_COOLOFF)
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "core/locked_out.html"
AXES_VERBOSE = False
# Invalid API keys per client address (the ``limits`` library's notation), counted across processes.
FLEET_API_KEY_FAILURE_RATE = env("FLEET_API_KEY_FAILURE_RATE", "20/minute")

# browser and session hardening (HTTPS, HSTS, cookies, ALLOWED_HOSTS)
# With an https:// FLEET_PUBLIC_URL, cookies are Secure and browsers are told to stay on HTTPS (HSTS).
# Behind a reverse proxy that terminates TLS, set FLEET_TRUST_X_FORWARDED_PROTO=1 (and make sure the
# proxy sets X-Forwarded-Proto itself, overwriting what a client sends).
FLEET_HTTPS = _public.scheme == "https"
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = FLEET_HTTPS
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = CSRF_COOKIE_SAMESITE = "Lax"
SECURE_HSTS_SECONDS = envint("FLEET_HSTS_SECONDS", 31536000) if FLEET_HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("FLEET_HSTS_INCLUDE_SUBDOMAINS", "true")
SECURE_HSTS_PRELOAD = envbool("FLEET_HSTS_PRELOAD", "true")
SECURE_SSL_REDIRECT = FLEET_HTTPS and envbool("FLEET_SSL_REDIRECT", "true")
# Health checks come over plain HTTP from inside the host or the pod.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
if envbool("FLEET_TRUST_X_FORWARDED_PROTO", "false"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# request body limits, read while streaming
# (sec-body)
FLEET_MAX_UPLOAD_SIZE = envint("FLEET_MAX_UPLOAD_SIZE", 8 * 1024**3)  # release uploads
FLEET_MAX_CONFIG_BODY = envint("FLEET_MAX_CONFIG_BODY", 4 * 1024**2)  # cloud-config routes
FLEET_MAX_AGENT_BODY = envint("FLEET_MAX_AGENT_BODY", 64 * 1024)  # agents, Omaha, FleetLock
FLEET_MAX_REQUEST_BODY = envint("FLEET_MAX_REQUEST_BODY", 1024**2)  # everything else
# The ASGI middleware above bounds the bytes read; Django's own check bounds non-file form data.
DATA_UPLOAD_MAX_MEMORY_SIZE = FLEET_MAX_CONFIG_BODY

# etcd discovery service
# (sec-discovery)
# Anonymous GET /discovery/new (as discovery.etcd.io); off: an operator's API key is needed (401).
FLEET_DISCOVERY_ANONYMOUS = envbool("FLEET_DISCOVERY_ANONYMOUS", "0")
# When on: anonymous creations per client IP (a `limits` rate string; Redis when REDIS_URL is set) and a
# cap on live anonymous tokens; beyond either, 429 and nothing stored.
FLEET_DISCOVERY_ANONYMOUS_RATE = env("FLEET_DISCOVERY_ANONYMOUS_RATE", "20/hour") or "20/hour"
FLEET_DISCOVERY_ANONYMOUS_MAX_TOKENS = envint("FLEET_DISCOVERY_ANONYMOUS_MAX_TOKENS", 10000)
# A token unused (no read, registration or watch) this many seconds answers 404 and is deleted.
FLEET_DISCOVERY_TOKEN_TTL = envint("FLEET_DISCOVERY_TOKEN_TTL", 7 * 24 * 3600)
# Open watches (?wait=true) per token (429) and per web process (503).
FLEET_DISCOVERY_WATCHES_PER_TOKEN = envint("FLEET_DISCOVERY_WATCHES_PER_TOKEN", 128)
FLEET_DISCOVERY_WATCHES_PER_PROCESS = envint("FLEET_DISCOVERY_WATCHES_PER_PROCESS", 1000)
# An open watch is woken when its token changes; it rechecks the database this often (seconds) anyway.
FLEET_DISCOVERY_WATCH_RECHECK = envint("FLEET_DISCOVERY_WATCH_RECHECK", 5)
CELERY_BEAT_SCHEDULE["delete-expired-discovery-tokens"] = {
    "task": "fleetweb.cloudconfig.tasks.delete_expired_discovery_tokens", "schedule": 3600.0}

# Omaha URLs
# (sec-omaha)

# re-enrollment and revocation
# An operator's "allow re-enrollment" on a host lasts this long (seconds), for one registration.
FLEET_REENROLLMENT_WINDOW = envint("FLEET_REENROLLMENT_WINDOW", 3600)
# Each web process rechecks its open agent sockets' credentials this often (seconds): the safety net
# should a revocation's close message be lost.
FLEET_CREDENTIAL_RECHECK = envint("FLEET_CREDENTIAL_RECHECK", 60)

# cloud-config document budget, per-connection agent rate limits
# (sec-yaml)
# Agent websocket frames per connection, per budget (the ``limits`` library's notation; counted in a
# leaky bucket per connection, fleetweb/fleet/ratelimit.py); over budget the frame is dropped with a warning, and FLEET_AGENT_RATE_TOLERANCE frames in
# a row over it close the socket with 4429.  cloud-config limits (nodes, bytes, depth) live in
# agent/cloudconfig.py.
FLEET_AGENT_FRAME_LIMITS = {
    "hello": env("FLEET_AGENT_HELLO_RATE", "6/minute"),
    "event": env("FLEET_AGENT_EVENT_RATE", "300/minute"),
    "status": env("FLEET_AGENT_STATUS_RATE", "300/minute"),
}
FLEET_AGENT_RATE_TOLERANCE = envint("FLEET_AGENT_RATE_TOLERANCE", 20)
for _name, _text in [*((f"FLEET_AGENT_{k.upper()}_RATE", v) for k, v in FLEET_AGENT_FRAME_LIMITS.items()),
                     ("FLEET_API_KEY_FAILURE_RATE", FLEET_API_KEY_FAILURE_RATE)]:
    try:
        _parse_rate(_text)
    except ValueError:
        raise ImproperlyConfigured(f"{_name} must be a rate such as '300/minute', not {_text!r}") from None

# etcd least privilege
# (sec-etcd)
# Without etcd auth every page shows that tenants are not isolated in etcd (so does /healthz).
TEMPLATES[0]["OPTIONS"]["context_processors"].append("fleetweb.core.context_processors.etcd_isolation")

# agent trust
# (sec-agent)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Django's hashers, the first one bounded (fleetweb/core/hashers.py); same algorithm and format.
PASSWORD_HASHERS = [
    "fleetweb.core.hashers.BoundedPBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "fleetweb.tenancy.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["fleetweb.tenancy.permissions.OrganizationRolePermission"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "fleetweb.core.api.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "fleetweb.core.schema.AutoSchema",
    "EXCEPTION_HANDLER": "fleetweb.core.api.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Fleetweb API",
    "DESCRIPTION": "Control plane for fleets of CoreOS-style hosts.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Several domains have a `status`; name each enum after its domain.
    "ENUM_NAME_OVERRIDES": {
        "RolloutStatusEnum": "fleetweb.updates.choices.RolloutStatus",
        "BuildStatusEnum": "fleetweb.builds.choices.BuildStatus",
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"redact": {"()": "fleetweb.core.redact.RedactSecrets"}},  # (sec-body) no secrets in logs
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact"]}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}
