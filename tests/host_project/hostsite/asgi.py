"""Step 2: the ASGI entry point serves calls' application."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hostsite.settings")
django_asgi_app = get_asgi_application()

from calls.asgi import calls_application  # noqa: E402

application = calls_application(django_asgi_app)
