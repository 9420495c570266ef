"""The ASGI application of calls, for a project's ``asgi.py`` (docs/integration.md):
HTTP goes to Django, except Socket.IO's long-polling (through the origin check to its
consumer, which authenticates at the Socket.IO connect); websockets go through the
origin check and the auth middleware (``CALLS_WEBSOCKET_AUTH_MIDDLEWARE``) to the
signaling consumers. Import it after ``django.setup()`` (``get_asgi_application()``)."""

from __future__ import annotations

from typing import Any

from channels.routing import ProtocolTypeRouter, URLRouter
from channels.sessions import CookieMiddleware
from django.urls import path, re_path

from calls import host
from calls.auth.websocket import OriginCheck
from calls.compat import adjust_daphne
from calls.lifecycle import ServerLifecycle
from calls.routing import websocket_urlpatterns
from calls.socketio.consumers import PollingConsumer


def calls_application(django_asgi_app: Any) -> ServerLifecycle:
    """The whole server: ``django_asgi_app`` (``get_asgi_application()``) for HTTP, the
    signaling endpoints for websockets, under the lifecycle that starts the timers and
    parks every connection on SIGTERM."""
    adjust_daphne()
    return ServerLifecycle(
        ProtocolTypeRouter(
            {
                "http": URLRouter(
                    [
                        path("socket.io/", OriginCheck(CookieMiddleware(PollingConsumer.as_asgi()))),
                        re_path(r"", django_asgi_app),
                    ]
                ),
                "websocket": OriginCheck(
                    CookieMiddleware(host.websocket_auth_middleware(URLRouter(websocket_urlpatterns)))
                ),
            }
        )
    )
