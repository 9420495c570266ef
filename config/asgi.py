"""ASGI entry point: HTTP goes to Django, except Socket.IO's long-polling (through the
origin check to its consumer, which authenticates at the Socket.IO connect); websockets
go through the origin check and authentication to the signaling consumers."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.sessions import CookieMiddleware  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from accounts.websocket import OriginCheck, WebsocketAuthMiddleware  # noqa: E402
from calls.compat import adjust_daphne  # noqa: E402
from calls.lifecycle import ServerLifecycle  # noqa: E402
from calls.routing import websocket_urlpatterns  # noqa: E402
from calls.socketio.consumers import PollingConsumer  # noqa: E402

adjust_daphne()

application = ServerLifecycle(
    ProtocolTypeRouter(
        {
            "http": URLRouter(
                [
                    path("socket.io/", OriginCheck(CookieMiddleware(PollingConsumer.as_asgi()))),
                    re_path(r"", django_asgi_app),  # type: ignore[arg-type]  # an ASGI app, as Channels routes them
                ]
            ),
            "websocket": OriginCheck(CookieMiddleware(WebsocketAuthMiddleware(URLRouter(websocket_urlpatterns)))),
        }
    )
)
