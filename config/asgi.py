"""ASGI entry point: this project serves calls' application (calls/asgi.py)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from calls.asgi import calls_application  # noqa: E402

application = calls_application(django_asgi_app)
