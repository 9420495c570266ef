"""An ASGI application for tests: the project's own, plus ``GET /compat-probe``, which
answers whether the daphne adjustments of ``calls.compat`` are in place in this process
(each replaced attribute compared with the library's original)."""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted import websocket as twisted_websocket
from autobahn.websocket import protocol
from daphne.server import Server
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
from twisted.internet.abstract import FileDescriptor
from twisted.web.http import HTTPChannel


def current() -> dict[str, Any]:
    return {
        "WebSocketProtocol.serverClose": WebSocketProtocol.serverClose,
        "WebSocketProtocol.onOpen": WebSocketProtocol.onOpen,
        "WebSocketProtocol.onMessage": WebSocketProtocol.onMessage,
        "WebSocketFactory.__init__": WebSocketFactory.__init__,
        "HTTPChannel.dataReceived": HTTPChannel.dataReceived,
        "HTTPChannel.allHeadersReceived": HTTPChannel.allHeadersReceived,
        "HTTPChannel.requestDone": HTTPChannel.requestDone,
        "HTTPChannel.connectionLost": HTTPChannel.connectionLost,
        "Server.handle_reply": Server.handle_reply,
        "FileDescriptor.write": FileDescriptor.write,
        "autobahn.protocol.pformat": protocol.pformat,
        "autobahn.protocol.hltype": protocol.hltype,
        "autobahn.protocol.hlval": protocol.hlval,
        "autobahn.twisted.hltype": twisted_websocket.hltype,
        "autobahn.twisted.hlval": twisted_websocket.hlval,
    }


# Taken before the project's application is imported, which is when it adjusts daphne.
ORIGINALS = current()
from calls import compat  # noqa: E402
from config.asgi import application as project  # noqa: E402


async def application(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == "/compat-probe":
        replaced = sorted(name for name, value in current().items() if value is not ORIGINALS[name])
        body = json.dumps({"adjusted": compat.adjusted(), "replaced": replaced}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    await project(scope, receive, send)
