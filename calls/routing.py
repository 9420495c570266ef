from typing import Any

from django.urls import path, re_path

from calls.consumers import CallConsumer


async def refuse_unknown_path(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A websocket handshake on a path this server does not serve: refused (servers
    answer a close before the accept with HTTP 403), where the router would raise."""
    await receive()  # websocket.connect
    await send({"type": "websocket.close"})


websocket_urlpatterns = [path("ws/calls/", CallConsumer.as_asgi()), re_path(r"", refuse_unknown_path)]
