# This module replaces methods of typed libraries and keeps state on their objects, which
# is what it is for: mypy's checks of exactly that are off here, and only here.
# mypy: disable-error-code="method-assign,attr-defined,union-attr,assignment"
"""Adjustments to daphne and the Twisted/autobahn stack under it, made only when daphne
is the server: each for a rule of the contract, for flow control, or for a measured cost."""

from __future__ import annotations

import asyncio
import importlib.metadata
import sys
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from calls import metrics

# The releases these adjustments were written and tested against. Each one replaces a
# method of these libraries or relies on their internals, so another release must be
# checked again (and this table updated) before it serves: refusing to start is better
# than a server that silently corrupts frames.
WRITTEN_FOR = {"daphne": "4.2.3", "Twisted": "26.10.0", "autobahn": "26.10.2"}

# Modules that only daphne's own entry points import: its command line (``daphne`` and
# ``python -m daphne``) and its ``runserver``. ``daphne.server`` alone says nothing:
# daphne's app config imports it, so it is loaded under uvicorn and in every
# management command as soon as ``daphne`` is in INSTALLED_APPS.
DAPHNE_ENTRY_MODULES = ("daphne.cli", "daphne.management.commands.runserver")

_adjusted = False


def daphne_is_the_server() -> bool:
    return any(name in sys.modules for name in DAPHNE_ENTRY_MODULES)


def adjusted() -> bool:
    """Whether this process made the adjustments below."""
    return _adjusted


def adjust_daphne() -> None:
    """Make every adjustment below, once, if daphne is the server running this process.
    Under any other server (and in management commands) nothing is changed."""
    global _adjusted
    if _adjusted or not daphne_is_the_server():
        return
    check_daphne_stack()
    _adjusted = True
    _allow_going_away_close()
    _defer_autobahn_debug_formatting()
    _add_flow_control()
    _write_at_once()
    _close_with_a_code_on_protocol_errors()
    _time_out_slow_request_heads()


def check_daphne_stack(installed: dict[str, str] | None = None) -> None:
    """Refuse to start on releases other than those of ``WRITTEN_FOR``, or when an
    attribute the adjustments replace or read is missing."""
    if installed is None:
        installed = {name: importlib.metadata.version(name) for name in WRITTEN_FOR}
    different = [f"{name} {installed[name]} (expected {WRITTEN_FOR[name]})" for name in WRITTEN_FOR
                 if installed[name] != WRITTEN_FOR[name]]  # fmt: skip
    if different:
        raise ImproperlyConfigured(
            f"calls.compat adjusts daphne and was written for {_releases(WRITTEN_FOR)}, but this "
            f"process has {', '.join(different)}. Install the pinned versions of requirements.txt, or "
            "check each adjustment in calls/compat.py against the new release and update WRITTEN_FOR."
        )
    from autobahn.twisted import websocket as twisted_websocket
    from autobahn.websocket import protocol
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
    from twisted.internet.abstract import FileDescriptor
    from twisted.web.http import HTTPChannel

    required = {
        WebSocketProtocol: ("serverClose", "sendCloseFrame", "onOpen", "onMessage", "STATE_CLOSING", "STATE_CLOSED"),
        WebSocketFactory: ("__init__", "setProtocolOptions"),
        HTTPChannel: ("dataReceived", "allHeadersReceived", "requestDone", "connectionLost", "callLater"),
        Server: ("handle_reply",),
        FileDescriptor: ("write", "dataBuffer", "_writeDisconnected", "connected", "disconnecting"),
        protocol: ("pformat", "hltype", "hlval"),
        twisted_websocket: ("hltype", "hlval"),
    }
    missing = [f"{getattr(owner, '__name__', owner)}.{name}" for owner, names in required.items()
               for name in names if not hasattr(owner, name)]  # fmt: skip
    if missing:
        raise ImproperlyConfigured(
            f"calls.compat cannot adjust daphne: {', '.join(missing)} no longer exist. Check calls/compat.py "
            "against the installed daphne, Twisted and autobahn."
        )


def _releases(versions: dict[str, str]) -> str:
    return ", ".join(f"{name} {version}" for name, version in versions.items())


def _allow_going_away_close() -> None:
    """Let daphne close websockets with 1001 (docs/protocol.md §8: server going away).

    autobahn, under daphne, lets a server close only with 1000 or 3000-4999 and raises
    for 1001, although RFC 6455 §7.4.1 defines 1001 for exactly this; the socket then
    ends with 1011 instead. Other codes keep autobahn's checks.
    """
    from daphne.ws_protocol import WebSocketProtocol

    original = WebSocketProtocol.serverClose

    def server_close(self: WebSocketProtocol, code: int | None = None) -> None:
        if code == 1001:
            self.sendCloseFrame(code=code, isReply=False)
        else:
            original(self, code)

    WebSocketProtocol.serverClose = server_close


class _LazyPformat:
    """``pformat`` that formats only if the text is ever asked for."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        from pprint import pformat

        return pformat(self.value)


class _LazyHighlight:
    """autobahn's ``hltype``/``hlval`` (colour the text of a debug line), called only if
    the text is ever asked for."""

    __slots__ = ("highlight", "value")

    def __init__(self, highlight: Any, value: object) -> None:
        self.highlight = highlight
        self.value = value

    def __str__(self) -> str:
        return str(self.highlight(self.value))

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _lazy(highlight: Any) -> Any:
    return lambda value, *args, **kwargs: _LazyHighlight(lambda v: highlight(v, *args, **kwargs), value)


def _defer_autobahn_debug_formatting() -> None:
    """autobahn (under daphne) formats debug lines that are not logged: it pretty-prints
    its whole configuration on every connection, and colours the arguments of a line on
    every frame sent and received (``hltype``/``hlval`` through click); docs/benchmarks.md
    has what each cost. Format them only when the line is written."""
    from autobahn.twisted import websocket as twisted_websocket
    from autobahn.websocket import protocol

    protocol.pformat = _LazyPformat
    for module in (protocol, twisted_websocket):
        module.hltype = _lazy(module.hltype)
        module.hlval = _lazy(module.hlval)


# Frames queued for one connection's consumer before daphne stops reading its socket. A
# newcomer to a full room sends ~315 frames at once; reading resumes long before the
# consumer gets through 64 of them, so the pause costs that burst nothing, while a
# client that outruns the server waits in its own buffers, not in this process.
INBOUND_HIGH_WATER = 64
INBOUND_LOW_WATER = 16


class _WriteFlow:
    """Twisted's producer interface for one websocket's write buffer: the transport
    calls ``pauseProducing`` when more than 64 KiB wait to be written to the socket and
    ``resumeProducing`` when they are written. Sends wait while it is paused."""

    __slots__ = ("writable",)

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()

    def pauseProducing(self) -> None:
        self.writable.clear()

    def resumeProducing(self) -> None:
        self.writable.set()

    def stopProducing(self) -> None:
        self.writable.set()


def _add_flow_control() -> None:
    """Give daphne the flow control uvicorn has, in both directions.

    daphne queues every frame a client sends for the consumer without bound, and writes
    every frame the consumer sends into a buffer without bound: a client sending faster
    than the server can relay grew the process by hundreds of MB in the benchmark, and a
    client that stops reading would grow it until memory ran out.

    - Inbound: past ``INBOUND_HIGH_WATER`` queued frames daphne stops reading that
      socket (TCP pushes back on the client) until the consumer is down to
      ``INBOUND_LOW_WATER``.
    - Outbound: while the socket's write buffer is over 64 KiB, the consumer's send
      waits. Its mailbox then fills, and senders get ``internal-error`` ("the recipient
      is not keeping up") instead of the server buffering for the stalled client.
    """
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketProtocol

    original_on_message = WebSocketProtocol.onMessage
    original_on_open = WebSocketProtocol.onOpen
    original_handle_reply = Server.handle_reply

    def on_open(self: WebSocketProtocol) -> None:
        original_on_open(self)
        flow = _WriteFlow()
        # The HTTP channel that handed this socket over to the websocket is still
        # registered as its producer, and has no more use for it.
        self.transport.unregisterProducer()
        self.transport.registerProducer(flow, True)
        self.calls_write_flow = flow

    def on_message(self: WebSocketProtocol, payload: bytes, is_binary: bool) -> None:
        original_on_message(self, payload, is_binary)
        queue = self.application_queue
        if queue.qsize() < INBOUND_HIGH_WATER or getattr(self, "calls_reading_paused", False):
            return
        self.calls_reading_paused = True
        self.transport.pauseProducing()
        metrics.BACKPRESSURE.labels("inbound").inc()
        if "get_nowait" not in vars(queue):
            take = queue.get_nowait

            # asyncio.Queue.get() ends in self.get_nowait(), so this sees every take.
            def get_nowait() -> Any:
                item = take()
                if self.calls_reading_paused and queue.qsize() <= INBOUND_LOW_WATER:
                    self.calls_reading_paused = False
                    self.transport.resumeProducing()
                return item

            queue.get_nowait = get_nowait

    async def handle_reply(self: Server, protocol: WebSocketProtocol, message: dict) -> None:
        flow = getattr(protocol, "calls_write_flow", None)
        if flow is not None and message.get("type") == "websocket.send":
            if not flow.writable.is_set():
                metrics.BACKPRESSURE.labels("outbound").inc()
                await flow.writable.wait()
            if protocol.state in (protocol.STATE_CLOSING, protocol.STATE_CLOSED):
                # The close handshake has begun, and autobahn would raise: daphne drops
                # a send once the connection is gone, and this is the moment before.
                return
        await original_handle_reply(self, protocol, message)

    WebSocketProtocol.onOpen = on_open
    WebSocketProtocol.onMessage = on_message
    Server.handle_reply = handle_reply


def _write_at_once() -> None:
    """Let Twisted write to a socket at once when nothing waits to be written before.

    Twisted buffers every write, asks the event loop to watch the socket for
    writability, and sends on the next loop iteration: two ``epoll_ctl`` calls and a
    loop pass per frame sent. asyncio's transports (uvicorn's) try ``send`` at once and
    buffer only what the kernel does not take; this does the same. Whatever is left goes
    through Twisted's own path, with its buffer limits and producers.
    """
    from twisted.internet.abstract import FileDescriptor

    original_write = FileDescriptor.write

    def write(self: FileDescriptor, data: bytes) -> None:
        sock = getattr(self, "socket", None)
        if (
            sock is not None
            and data
            and type(data) is bytes
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnected
            and not self.dataBuffer
            and not self._tempDataBuffer
        ):
            try:
                sent = sock.send(data)
            except OSError:  # full (EAGAIN), or failed: Twisted's path meets it again and reports a loss
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        original_write(self, data)

    FileDescriptor.write = write


def _close_with_a_code_on_protocol_errors() -> None:
    """Close a websocket that breaks the protocol with its close code, as RFC 6455 asks
    (1007 for a text frame that is not UTF-8, 1002 for other violations).

    autobahn's servers "fail by drop" by default: they reset the TCP connection, so the
    client sees a network error (1006) and cannot tell its own bug from a lost network.
    """
    from daphne.ws_protocol import WebSocketFactory

    original_init = WebSocketFactory.__init__

    def init(self: WebSocketFactory, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.setProtocolOptions(failByDrop=False)

    WebSocketFactory.__init__ = init


# From the first byte of a request to the end of its headers (a websocket handshake
# included). Twisted only times out a connection that sends nothing for a minute, so a
# client that trickles a byte every few seconds held its connection (and a file
# descriptor) indefinitely, without logging in.
REQUEST_HEAD_TIMEOUT_SECS = 5.0


def _time_out_slow_request_heads() -> None:
    """Abort an HTTP connection whose request head is not complete within
    ``REQUEST_HEAD_TIMEOUT_SECS`` of its first byte. A body, once the head is in, and an
    idle keep-alive connection keep Twisted's own timeouts."""
    from twisted.web.http import HTTPChannel

    original_data_received = HTTPChannel.dataReceived
    original_all_headers_received = HTTPChannel.allHeadersReceived
    original_request_done = HTTPChannel.requestDone
    original_connection_lost = HTTPChannel.connectionLost

    def disarm(channel: HTTPChannel) -> None:
        deadline = channel.__dict__.pop("calls_head_deadline", None)
        if deadline is not None and deadline.active():
            deadline.cancel()

    def data_received(self: HTTPChannel, data: bytes) -> None:
        if "calls_head_deadline" not in self.__dict__ and not self.__dict__.get("calls_in_request"):
            self.calls_head_deadline = self.callLater(REQUEST_HEAD_TIMEOUT_SECS, self.transport.abortConnection)
        original_data_received(self, data)

    def all_headers_received(self: HTTPChannel) -> None:
        disarm(self)
        self.calls_in_request = True
        original_all_headers_received(self)

    def request_done(self: HTTPChannel, request: Any) -> None:
        self.calls_in_request = False
        original_request_done(self, request)

    def connection_lost(self: HTTPChannel, reason: Any) -> None:
        disarm(self)
        original_connection_lost(self, reason)

    HTTPChannel.dataReceived = data_received
    HTTPChannel.allHeadersReceived = all_headers_received
    HTTPChannel.requestDone = request_done
    HTTPChannel.connectionLost = connection_lost
