"""The Channels consumers of ``/socket.io/``: Engine.IO long-polling over HTTP, and
Engine.IO over a websocket (from the start, or as the upgrade of a polling session).

Thin: each reads its transport's framing and hands the packets to the session
(``calls.socketio.engine``); the session sends back through them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from calls.auth.websocket import ORIGIN_STATE
from calls.consumers import ABNORMAL_CLOSURE
from calls.socketio.codec import PING, PONG, PROBE, SEPARATOR, UPGRADE
from calls.socketio.engine import MAX_PAYLOAD, EngineSession, OverlappingPoll, sessions

logger = logging.getLogger("calls")

TEXT = b"text/plain; charset=UTF-8"
# Engine.IO's error answers (its server's codes and messages, which clients may show).
UNKNOWN_TRANSPORT = (0, "Transport unknown")
UNKNOWN_SID = (1, "Session ID unknown")
BAD_METHOD = (2, "Bad handshake method")
BAD_REQUEST = (3, "Bad request")
UNSUPPORTED_VERSION = (5, "Unsupported protocol version")
PREFLIGHT_HEADERS = [
    (b"access-control-allow-methods", b"GET, POST"),
    (b"access-control-allow-headers", b"content-type, authorization"),
]


def _query(scope: dict[str, Any]) -> dict[str, str]:
    """The query's parameters, the first value of each."""
    return {name: values[0] for name, values in parse_qs(scope.get("query_string", b"").decode("latin1")).items()}


class PollingConsumer(AsyncHttpConsumer):
    """Engine.IO long-polling: a GET without ``sid`` opens a session; a GET with one
    waits for the session's packets (at most pingInterval); a POST delivers the
    client's packets, separated by ``\\x1e``."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Read the request, answer it. Channels' loop would open a channel-layer channel
        for every request (a Redis subscription), which nothing here reads."""
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_PAYLOAD:
                await self._too_large()
                return
            if not message.get("more_body"):
                break
        await self.respond(bytes(body), receive)

    async def respond(self, body: bytes, receive: Any) -> None:
        """Called with the whole request: answer it as Engine.IO's server does."""
        scope = self.scope
        method = scope["method"]
        if method == "OPTIONS":  # a preflight, for a front end on another allowed origin
            await self._answer(204, b"", extra=PREFLIGHT_HEADERS)
            return
        query = _query(scope)
        if query.get("EIO") != "4":
            await self._error(UNSUPPORTED_VERSION)
            return
        if query.get("transport") != "polling":
            await self._error(UNKNOWN_TRANSPORT)
            return
        sid = query.get("sid")
        if sid is None:
            if method != "GET":
                await self._error(BAD_METHOD)
                return
            session = sessions.open(scope)
            if session is None:
                await self._answer(503, b"Too many sessions; try again.")
                return
            await self._answer(200, session.handshake().encode())
            session.start()
            return
        session = sessions.get(sid)
        if session is None:
            await self._error(UNKNOWN_SID)
        elif session.socket is not None or method not in ("GET", "POST"):
            await self._error(BAD_REQUEST)  # upgraded to a websocket, or not Engine.IO
        elif method == "GET":
            await self._poll(session, receive)
        else:
            await self._deliver(session, body)

    async def _poll(self, session: EngineSession, receive: Any) -> None:
        """Answer with the session's packets once it has some; give up if the client goes."""
        polled = asyncio.ensure_future(session.poll())
        gone = asyncio.ensure_future(receive())  # http.disconnect, when the client goes
        try:
            await asyncio.wait((polled, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not polled.done():
            polled.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await polled
            return
        try:
            packets = polled.result()
        except OverlappingPoll:
            await self._error(BAD_REQUEST)
            await session.close("reason=overlapping-polls")
            return
        await self._answer(200, SEPARATOR.join(packets).encode())

    async def _deliver(self, session: EngineSession, body: bytes) -> None:
        try:
            text = body.decode()
        except UnicodeDecodeError:
            await self._error(BAD_REQUEST)
            await session.close("reason=payload-not-utf8")
            return
        for packet in text.split(SEPARATOR):
            await session.receive(packet)
        await self._answer(200, b"ok")

    async def _too_large(self) -> None:
        session = sessions.get(_query(self.scope).get("sid", ""))
        await self._answer(413, b"Payload Too Large")
        if session is not None:
            await session.close("reason=payload-too-large")

    async def _error(self, error: tuple[int, str]) -> None:
        code, message = error
        body = b'{"code":%d,"message":"%s"}' % (code, message.encode())
        await self._answer(400, body, content_type=b"application/json")

    async def _answer(
        self, status: int, body: bytes, *, content_type: bytes = TEXT, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        headers = [(b"content-type", content_type), *(extra or [])]
        if self.scope.get(ORIGIN_STATE) == "allowed":
            # The origin check let it through: a page of another allowed origin may read
            # the answer, with its cookies (which authenticate only with an allowed Origin).
            origin = next(value for name, value in reversed(self.scope["headers"]) if name == b"origin")
            headers += [(b"access-control-allow-origin", origin), (b"access-control-allow-credentials", b"true"),
                        (b"vary", b"Origin")]  # fmt: skip
        await self.send_response(status, body, headers=headers)


class WebsocketConsumer(AsyncWebsocketConsumer):
    """Engine.IO over a websocket. Without ``sid`` it opens a session of its own; with a
    polling session's ``sid`` it probes (``2probe`` → ``3probe``) and, on ``5``, takes the
    session over."""

    session: EngineSession | None = None  # the session this socket carries
    probing: EngineSession | None = None  # the session this socket offers to carry
    closing = False  # set once either side closed: nothing more may be sent

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Channels' consumer loop without a channel-layer channel: the session's tasks
        send through this consumer, and nothing reads a channel."""
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        with contextlib.suppress(StopConsumer):
            while True:
                await self.dispatch(await receive())
                # As in calls.consumers: receive() does not suspend while the server holds
                # queued frames, so yield, or a burst is handled in one go while its
                # recipients' mailboxes, whose writers never ran, overflow.
                await asyncio.sleep(0)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Called for every message from the socket (without Channels' database cleanup:
        nothing here uses the database on this task)."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        """Called on the handshake. The origin check and the handshake's authentication
        have run (calls/asgi.py); a socket that is not Engine.IO v4, or names a session
        that cannot be upgraded, is refused (HTTP 403)."""
        query = _query(self.scope)
        if query.get("EIO") != "4" or query.get("transport") != "websocket":
            await self.close()
            return
        sid = query.get("sid")
        if sid is None:
            session = sessions.open(self.scope, self)
            if session is None:
                await self.close()
                return
            self.session = session
            await self.accept()
            await self.send_packet(session.handshake())
            session.start()
            return
        session = sessions.get(sid)
        if session is None or not session.may_probe():
            await self.close()
            return
        await self.accept()
        self.probing = session
        session.start_probe(self)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Called for each frame: one Engine.IO packet."""
        if self.closing:
            return
        if self.session is not None:
            if text_data is None:
                await self.session.receive_binary()
            else:
                await self.session.receive(text_data)
            return
        probing = self.probing
        if probing is None:
            return
        if text_data == PING + PROBE:
            await self.send_packet(PONG + PROBE)
            probing.probe_answered(self)
        elif text_data == UPGRADE and await probing.upgrade(self):
            self.session, self.probing = probing, None
        else:  # anything else breaks the upgrade; the client goes on polling
            await self.close()

    async def send_packet(self, packet: str) -> None:
        """Called by the session for each packet it sends over this socket."""
        if self.closing:
            return
        try:
            await self.send(text_data=packet)
        except OSError:  # uvicorn: the client has gone; its disconnect is on its way
            self.closing = True

    async def close_socket(self) -> None:
        """Called by the session when it ends, or when a probe is given up."""
        if not self.closing:
            await self.close()

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        self.closing = True
        await super().close(code=code, reason=reason)

    async def disconnect(self, code: int) -> None:
        """Called when the socket closes, whoever closed it."""
        self.closing = True
        lost = code == ABNORMAL_CLOSURE
        if self.session is not None:
            await self.session.transport_closed(self, lost=lost)
        elif self.probing is not None:
            await self.probing.transport_closed(self, lost=lost)
