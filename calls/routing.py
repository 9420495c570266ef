from typing import Any

from django.urls import path, re_path

from calls.consumers import CallConsumer
from calls.socketio.consumers import WebsocketConsumer as SocketIOWebsocketConsumer


async def refuse_unknown_path(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A websocket handshake on a path this server does not serve: refused (servers
    answer a close before the accept with HTTP 403), where the router would raise."""
    await receive()  # websocket.connect
    await send({"type": "websocket.close"})


websocket_urlpatterns = [
    path("ws/calls/", CallConsumer.as_asgi()),
    path("socket.io/", SocketIOWebsocketConsumer.as_asgi()),  # docs/protocol.md §1, compatibility endpoint
    re_path(r"", refuse_unknown_path),  # type: ignore[arg-type]  # an ASGI app, as Channels routes them
]
