"""Settings of a chat product that has added calls (docs/integration.md, steps 1 and 3)."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("SECRET_KEY", "host-project-test-secret-key-of-sufficient-length")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "people",
    "teams",
    "calls",  # step 1
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "hostsite.urls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True, "OPTIONS": {}}]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ.get("HOST_DB", BASE_DIR / "db")}}
AUTH_USER_MODEL = "people.Person"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
STATIC_URL = "static/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["people.auth.KeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
}

# Step 2: the ASGI application and one process's channel layer (Redis for several).
ASGI_APPLICATION = "hostsite.asgi.application"
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Step 3: where calls finds this product's groups, roles, names and credentials.
CALLS_GROUP_MODEL = "teams.Team"
CALLS_USER_GROUPS = "teams.for_calls.team_ids_of"
CALLS_GROUP_ROLES = "teams.for_calls.levels_among"
CALLS_GROUP_MEMBERS = "teams.for_calls.seated_in"
CALLS_GROUP_NAME = "teams.for_calls.title_of"
CALLS_MODERATOR_ROLES = ["host"]
CALLS_DISPLAY_NAME = "people.auth.name_of"
CALLS_TOKEN_USER = "people.auth.person_from_key"
CALLS_WEBSOCKET_AUTH_MIDDLEWARE = "people.auth.KeyMiddleware"
