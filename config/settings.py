"""Django settings. Everything deployment-specific is read from the environment here,
and only here (see the configuration table in README.md)."""

from __future__ import annotations

import re
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from calls.conf import env_bool, env_int, env_list, env_str, from_environment

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is not set: set it, or set DEBUG=1 to use the development key.")
    SECRET_KEY = "dev-only-insecure-key-never-use-in-production"  # noqa: S105 - development only

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    # daphne first: its runserver replaces Django's and serves websockets too.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "drf_spectacular",
    # Swagger UI's files for /api/docs/, served like the apps' own static files (no CDN).
    "drf_spectacular_sidecar",
    "accounts",
    "groups",
    "calls",
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

# CORS (django-cors-headers), for front ends on another origin (a dev server on another
# port, the chat product's own domain) that obtain tokens from /api/ and load
# /static/calls/signaling.js. Its middleware sits above WhiteNoise, which answers static
# files itself, without the middleware below it. The default is the websocket's full
# origins, CSRF_TRUSTED_ORIGINS (`https://*.example.com`: example.com and its subdomains,
# as for CSRF; Channels' `https://.example.com` means the same). The hosts of ALLOWED_HOSTS
# are not turned into origins: they name this server, whose own pages are same-origin and
# need no CORS, and an origin made of a host needs a guessed scheme and port (the
# websocket's host-only match would let a page on any port of those hosts read API
# answers). In debug, any port of the loopback hosts is allowed, for a dev server beside
# `make run`. No credentials: a front end elsewhere sends a bearer token, never this
# site's session cookie. Static files keep WhiteNoise's `Access-Control-Allow-Origin: *`
# for other origins: they are public.
INSTALLED_APPS.append("corsheaders")
MIDDLEWARE.insert(
    MIDDLEWARE.index("whitenoise.middleware.WhiteNoiseMiddleware"), "corsheaders.middleware.CorsMiddleware"
)
_cors_source = "CORS_ALLOWED_ORIGINS" if env_str("CORS_ALLOWED_ORIGINS") is not None else "CSRF_TRUSTED_ORIGINS"
CORS_ALLOWED_ORIGINS: list[str] = []
CORS_ALLOWED_ORIGIN_REGEXES: list[str] = [r"^http://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?$"] if DEBUG else []
for _origin in env_list("CORS_ALLOWED_ORIGINS", CSRF_TRUSTED_ORIGINS):
    _parts: SplitResult | None
    try:
        _parts = urlsplit(_origin.lower())
        _parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        _parts = None
    if (
        _parts is None
        or _parts.scheme not in ("http", "https")
        or not _parts.hostname
        or "@" in _parts.netloc
        or any((_parts.path, _parts.query, _parts.fragment))
    ):
        raise ImproperlyConfigured(
            f"{_origin!r} in {_cors_source} is not an origin: write scheme://host[:port], e.g. https://chat.example.com."
        )
    if _parts.netloc.startswith(("*.", ".")):
        _domain = re.escape(_parts.netloc.lstrip("*")[1:])
        CORS_ALLOWED_ORIGIN_REGEXES.append(rf"^{_parts.scheme}://([a-z0-9-]+\.)*{_domain}$")
    else:
        CORS_ALLOWED_ORIGINS.append(f"{_parts.scheme}://{_parts.netloc}")

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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
        env_str("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        # Persistent connections: opening one (and its PRAGMAs) cost more than a join write.
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        # Joins and leaves write from a thread pool (and, in tests, several processes
        # share the file): wait for the lock instead of failing, take it up front, and
        # let readers run beside the writer.
        timeout=20,
        transaction_mode="IMMEDIATE",
        init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    )

AUTH_USER_MODEL = "accounts.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

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
STATIC_ROOT = BASE_DIR / "staticfiles"
# WhiteNoise serves the call page's files straight from the apps, under daphne too, so no
# collectstatic step is needed; STATIC_ROOT is served as well once collectstatic has filled it.
WHITENOISE_USE_FINDERS = True
warnings.filterwarnings("ignore", message="No directory at: ", module="django.core.handlers.base")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework_simplejwt.authentication.JWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# The HTTP API's OpenAPI 3 schema (/api/schema/) and Swagger UI (/api/docs/): both public,
# like the AsyncAPI document of the websocket protocol.
SPECTACULAR_SETTINGS = {
    "TITLE": "Call signaling server: HTTP API",
    "DESCRIPTION": (
        "The HTTP API of the call signaling server (docs/protocol.md §11): tokens and websocket tickets, "
        "the caller's chat groups, and its calls, live and past. Authenticate with `Authorization: Bearer "
        "ACCESS` (from `POST /api/auth/token/`) or a session.\n\n"
        "The signaling protocol itself, spoken over the websocket `/ws/calls/` (and `/socket.io/`), is "
        "described by an AsyncAPI 3.0.0 document: [/api/asyncapi.json](/api/asyncapi.json)."
    ),
    "VERSION": "1.1",
    "EXTERNAL_DOCS": {"description": "The signaling protocol (AsyncAPI 3.0.0)", "url": "/api/asyncapi.json"},
    "SCHEMA_PATH_PREFIX": "/api/",
    "SERVE_INCLUDE_SCHEMA": False,  # calls.api.document_plain_views describes /api/schema/ itself
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        # The views under /api/ that drf-spectacular leaves out (origin check, AsyncAPI, schema, docs).
        "calls.api.document_plain_views",
    ],
}

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(seconds=env_int("JWT_ACCESS_TTL_SECS", 900, minimum=1)),
    "REFRESH_TOKEN_LIFETIME": timedelta(seconds=env_int("JWT_REFRESH_TTL_SECS", 7 * 86400, minimum=1)),
    "ALGORITHM": "HS256",
    "SIGNING_KEY": SECRET_KEY,
    "UPDATE_LAST_LOGIN": False,
}

# Channel layer: in-process by default; Redis when REDIS_URL is set, so that several
# server processes share one set of rooms. REDIS_CHANNEL_LAYER picks the Redis layer
# ("pubsub": one PUBLISH per relay; "core": lists with at-least-once queues).
REDIS_URL = env_str("REDIS_URL") or None
REDIS_CHANNEL_LAYER = env_str("REDIS_CHANNEL_LAYER") or "pubsub"
_REDIS_LAYERS = {
    "pubsub": "calls.layers.DispatchingRedisPubSubChannelLayer",
    "core": "channels_redis.core.RedisChannelLayer",
}
if REDIS_CHANNEL_LAYER not in _REDIS_LAYERS:
    raise ImproperlyConfigured(f"REDIS_CHANNEL_LAYER={REDIS_CHANNEL_LAYER!r}: use one of {', '.join(_REDIS_LAYERS)}.")
if REDIS_URL:
    CHANNEL_LAYERS: dict[str, dict[str, Any]] = {
        "default": {
            "BACKEND": _REDIS_LAYERS[REDIS_CHANNEL_LAYER],
            "CONFIG": {
                # redis-py 8 times idle reads out after 5 s, which kills blocking
                # receives (channels_redis#422); its pool stops at 100 connections.
                "hosts": [{"address": REDIS_URL, "socket_timeout": None, "max_connections": 1000}],
            },
        }
    }
else:
    # One process: frames never leave it (calls/delivery.py), the layer is only checked by /readyz.
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Signaling settings (calls/conf.py reads each from its environment variable, with its
# default and checks; docs/protocol.md §7 and the README's configuration table).
CALLS_MAX_PARTICIPANTS = from_environment("CALLS_MAX_PARTICIPANTS")
CALLS_MAX_MESSAGE_BYTES = from_environment("CALLS_MAX_MESSAGE_BYTES")
CALLS_RATE_LIMIT = from_environment("CALLS_RATE_LIMIT")
CALLS_RATE_BURST = from_environment("CALLS_RATE_BURST")
CALLS_AUTH_FAILURES_PER_MINUTE = from_environment("CALLS_AUTH_FAILURES_PER_MINUTE")
CALLS_LOGIN_FAILURES_PER_ADDRESS = from_environment("CALLS_LOGIN_FAILURES_PER_ADDRESS")
CALLS_LOGIN_FAILURES_PER_USERNAME = from_environment("CALLS_LOGIN_FAILURES_PER_USERNAME")
CALLS_WS_TICKET_TTL_SECS = from_environment("CALLS_WS_TICKET_TTL_SECS")
CALLS_PRESENCE_TTL_SECS = from_environment("CALLS_PRESENCE_TTL_SECS")
CALLS_RESUME_GRACE_SECS = from_environment("CALLS_RESUME_GRACE_SECS")
CALLS_RESUME_BUFFER = from_environment("CALLS_RESUME_BUFFER")
CALLS_RING_TIMEOUT_SECS = from_environment("CALLS_RING_TIMEOUT_SECS")
CALLS_MAX_CONNECTIONS_PER_USER = from_environment("CALLS_MAX_CONNECTIONS_PER_USER")
CALLS_JOINS_PER_MINUTE = from_environment("CALLS_JOINS_PER_MINUTE")
CALLS_HISTORY_QUEUE_LIMIT = from_environment("CALLS_HISTORY_QUEUE_LIMIT")
CALLS_ICE_SERVERS = from_environment("CALLS_ICE_SERVERS")
CALLS_TURN_URLS = from_environment("CALLS_TURN_URLS")
CALLS_TURN_SECRET = from_environment("CALLS_TURN_SECRET")
CALLS_TURN_TTL_SECS = from_environment("CALLS_TURN_TTL_SECS")
CALLS_TRUSTED_PROXIES = from_environment("CALLS_TRUSTED_PROXIES")
CALLS_SHUTDOWN_TIMEOUT_SECS = from_environment("CALLS_SHUTDOWN_TIMEOUT_SECS")
CALLS_SOCKETIO_PING_INTERVAL_SECS = from_environment("CALLS_SOCKETIO_PING_INTERVAL_SECS")
CALLS_SOCKETIO_PING_TIMEOUT_SECS = from_environment("CALLS_SOCKETIO_PING_TIMEOUT_SECS")
CALLS_METRICS_ALLOWED_IPS = from_environment("CALLS_METRICS_ALLOWED_IPS")
CALLS_METRICS_TOKEN = from_environment("CALLS_METRICS_TOKEN")
CALLS_PRESENCE_BACKEND = from_environment("CALLS_PRESENCE_BACKEND")

LOG_LEVEL = (env_str("LOG_LEVEL") or "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {"calls": {"level": LOG_LEVEL}},
}
