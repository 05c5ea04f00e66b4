"""One settings file, driven by the environment.

With nothing set it runs embedded: SQLite, Celery tasks executed in-process, emails written to a
local outbox folder. Set DATABASE_URL / REDIS_URL / EMAIL_URL for the production shape.
"""

import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("XSELL_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)  # SQLite file, outbox, model artefacts, uploads


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name}={value!r} is not a boolean (use 1/0, true/false, yes/no)")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", default=not os.environ.get("SECRET_KEY"))
SECRET_KEY = env_str("SECRET_KEY") or "insecure-embedded-key-set-SECRET_KEY-in-production"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "anymail",
    "customers",
    "campaigns",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "xsell_crm.urls"
WSGI_APPLICATION = "xsell_crm.wsgi.application"

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

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
        conn_max_age=env_int("DB_CONN_MAX_AGE", 60),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the dev server read while an import or a send writes.
    # IMMEDIATE: a transaction takes the write lock when it begins, so two processes claiming messages
    # serialise instead of both reading "planned" (PostgreSQL uses SELECT ... FOR UPDATE SKIP LOCKED).
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL;",
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Celery: with no broker configured, tasks run eagerly in the calling process.
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", default=not REDIS_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True  # a killed worker's task is redelivered; claims make that safe
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"


def _email_from_url(url: str) -> dict:
    """smtp://user:pass@host:port?tls=1 (or smtps://) -> Django EMAIL_* settings."""
    parsed = urlparse(url)
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    if parsed.scheme not in {"smtp", "smtps"}:
        raise ValueError(f"EMAIL_URL scheme {parsed.scheme!r} is not supported (use smtp:// or smtps://)")
    return {
        # Django's SMTP backend, writing a campaign's email without building its MIME tree (same bytes).
        "EMAIL_BACKEND": "campaigns.sending.backend.EmailBackend",
        "EMAIL_HOST": parsed.hostname or "localhost",
        "EMAIL_PORT": parsed.port or (465 if parsed.scheme == "smtps" else 25),
        "EMAIL_HOST_USER": unquote(parsed.username or ""),
        "EMAIL_HOST_PASSWORD": unquote(parsed.password or ""),
        "EMAIL_USE_SSL": parsed.scheme == "smtps",
        "EMAIL_USE_TLS": query.get("tls", "0").lower() in {"1", "true", "yes"},
        "EMAIL_TIMEOUT": int(query.get("timeout", "30")),
    }


EMAIL_URL = env_str("EMAIL_URL")
if EMAIL_URL:
    globals().update(_email_from_url(EMAIL_URL))
else:
    EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.filebased.EmailBackend")
    EMAIL_FILE_PATH = str(VAR_DIR / "outbox")
    EMAIL_TIMEOUT = 30
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "offers@shop.example")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
ANYMAIL = {"WEBHOOK_SECRET": env_str("ANYMAIL_WEBHOOK_SECRET")} if env_str("ANYMAIL_WEBHOOK_SECRET") else {}

LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_ROOT = VAR_DIR / "media"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SECURE_CONTENT_TYPE_NOSNIFF = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# Recommender artefacts (one joblib file per model version).
MODEL_DIR = Path(env_str("MODEL_DIR") or (VAR_DIR / "models"))
# The next-best-offer API: comma-separated bearer tokens allowed to call it.
API_TOKENS = env_list("API_TOKENS")

# Sending: transient SMTP failures (4xx) are retried with exponential backoff and jitter, a bounded
# number of times; a message left in "sending" longer than SEND_STUCK_MINUTES becomes "uncertain".
SEND_BATCH_SIZE = env_int("SEND_BATCH_SIZE", 1000)  # bench: 1,000 beat 200 (fewer recommender calls)
SEND_MAX_ATTEMPTS = env_int("SEND_MAX_ATTEMPTS", 5)
SEND_RETRY_BASE_SECONDS = env_int("SEND_RETRY_BASE_SECONDS", 60)
SEND_STUCK_MINUTES = env_int("SEND_STUCK_MINUTES", 15)
# A message the server never saw (it could not be reached; the batch ran out of time) is deferred, not
# counted as an attempt: tried again after about as long as it has waited so far (at most
# SEND_DEFER_MAX_SECONDS), and failed once SEND_DEFER_HOURS have passed since its first deferral.
SEND_DEFER_HOURS = env_int("SEND_DEFER_HOURS", 24)
SEND_DEFER_MAX_SECONDS = env_int("SEND_DEFER_MAX_SECONDS", 1800)

# Attribution: an order of an offered product counts for the offer within these windows.
ATTRIBUTION_CLICK_DAYS = env_int("ATTRIBUTION_CLICK_DAYS", 7)
ATTRIBUTION_DELIVERY_DAYS = env_int("ATTRIBUTION_DELIVERY_DAYS", 30)
ATTRIBUTION_WINDOW_DAYS = ATTRIBUTION_DELIVERY_DAYS  # the reports' window for AOV and holdout purchases
# Tracking: open/click/offer links stop working this long after sending (opt-out links never expire);
# a click sooner than TRACKING_SCANNER_SECONDS after sending is a link scanner, not a person.
TRACKING_TOKEN_DAYS = env_int("TRACKING_TOKEN_DAYS", 365)
TRACKING_SCANNER_SECONDS = env_int("TRACKING_SCANNER_SECONDS", 10)
# Opens and clicks queued in Redis and written in bulk by the campaigns.tracking_flush task (beat, every
# 10 s): the pixel touches no database. Needs REDIS_URL; events appear in reports after the next flush.
TRACKING_BUFFER = env_bool("TRACKING_BUFFER") and bool(REDIS_URL)
REPORT_CACHE_SECONDS = env_int("REPORT_CACHE_SECONDS", 600)
