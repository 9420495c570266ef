"""ASGI entry point: HTTP goes to Django, websockets through the origin check and
authentication to the signaling consumer."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.sessions import CookieMiddleware  # noqa: E402

from accounts.websocket import OriginCheck, SessionFromCookie, WebsocketAuthMiddleware  # noqa: E402
from calls.compat import (  # noqa: E402
    add_flow_control_under_daphne,
    allow_going_away_close_under_daphne,
    defer_autobahn_debug_formatting,
    write_at_once_under_daphne,
)
from calls.lifecycle import ServerLifecycle  # noqa: E402
from calls.routing import websocket_urlpatterns  # noqa: E402

allow_going_away_close_under_daphne()
defer_autobahn_debug_formatting()
add_flow_control_under_daphne()
write_at_once_under_daphne()

application = ServerLifecycle(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            "websocket": OriginCheck(
                CookieMiddleware(SessionFromCookie(WebsocketAuthMiddleware(URLRouter(websocket_urlpatterns))))
            ),
        }
    )
)
