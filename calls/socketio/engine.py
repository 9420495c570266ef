"""Engine.IO sessions and the Socket.IO connection each may carry.

An ``EngineSession`` starts with an Engine.IO handshake, over long-polling (an HTTP
GET) or a websocket, and lives in this process's ``sessions`` until it closes. It sends
packets over the transport it has at the moment: a long-polling session queues them
for the client's next GET (``poll``), and moves to a websocket when the client upgrades
(``2probe``/``3probe``, then ``5``); a websocket session writes them to its socket. It
pings the client every pingInterval and closes when a ping is not answered within
pingTimeout.

The client's Socket.IO CONNECT to ``/`` opens a connection of ``calls.session``, as the
native endpoint does on its handshake: the same authentication (``calls.auth.websocket``),
a ``Caller`` with a mailbox, the same limits. A task writes the mailbox to the client,
taking turns with the replies to requests (``turn``), so that a reply goes out before
anything that arrived while its request was handled.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Coroutine, Sequence
from importlib import import_module
from typing import Any, Protocol

import msgspec
from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase

from calls import delivery
from calls.auth.throttle import client_address
from calls.auth.websocket import (
    AUTH_EXPIRES_AT,
    AUTH_THROTTLED,
    Authentication,
    authenticate,
    cookie_session,
    presented_credential,
)
from calls.protocol import CloseCode, Outgoing
from calls.services.caller import Caller
from calls.services.resume import socketio_pid
from calls.session import Parser, SignalingSession, open_session, refusal
from calls.socketio.codec import (
    BINARY_MESSAGE,
    CLOSE,
    DISCONNECT_PACKET,
    MAIN_NAMESPACE,
    MESSAGE,
    NOOP,
    PING,
    PONG,
    SOCKETIO,
    UPGRADE,
    Packet,
    PacketError,
    PacketType,
    connect_error_packet,
    connect_packet,
    decode_packet,
    open_packet,
    parse_event,
    unreadable,
)

logger = logging.getLogger("calls")

# Socket.IO's own defaults: the largest long-polling body a client may send (a larger one
# closes the session; each event in it is still held to CALLS_MAX_MESSAGE_BYTES), the time
# a new session has to connect to "/", and the time a websocket probe has to finish.
MAX_PAYLOAD = 1_000_000
CONNECT_TIMEOUT_SECS = 45.0
UPGRADE_TIMEOUT_SECS = 10.0
# Events queued for a long-polling client before its mailbox fills behind them: like a
# websocket's socket buffer, so that a client that stops polling holds back its senders
# (docs/protocol.md §5 rule 9) instead of growing this process.
OUTBOX_LIMIT = 100
MAX_SKIPPED_ATTACHMENTS = 16
# Sessions of this process that have not connected to "/" yet. A long-polling handshake
# needs no lasting TCP connection, so without a bound a client could open sessions (each
# kept until its connect deadline) far faster than it could open websockets.
MAX_UNCONNECTED_SESSIONS = 10_000

# The connect_error message for each refusal, in place of the native close codes.
CONNECT_ERRORS = {
    CloseCode.UNAUTHENTICATED: "unauthenticated",
    CloseCode.FLOODING: "rate-limited",
    CloseCode.TOO_MANY_CONNECTIONS: "too-many-connections",
}
INVALID_NAMESPACE = "invalid-namespace"
INVALID_CONNECT = "invalid-message"
SERVER_FAILED = "internal-error"
UPGRADE_MISPLACED = "an upgrade packet belongs on the probing websocket"
NOT_ENGINE_IO = "an Engine.IO packet starts with a type digit 0-6"

_connect_payload_decoder = msgspec.json.Decoder(dict[str, Any])


class Socket(Protocol):
    """A websocket that carries (or offers to carry) a session: the consumer."""

    async def send_packet(self, packet: str) -> None: ...

    async def close_socket(self) -> None: ...


class OverlappingPoll(Exception):
    """A long-polling GET while another one of the same session waits."""


class EngineSession:
    """One Engine.IO session; see the module's docstring."""

    def __init__(self, registry: EngineSessions, sid: str, scope: dict[str, Any], socket: Socket | None) -> None:
        self.registry = registry
        self.sid = sid
        self.scope = scope  # the handshake's: address, query, headers, cookies (and, on a websocket, its user)
        self.socket = socket  # the websocket that carries the session; None while long-polling
        self.probe: Socket | None = None  # a websocket testing the upgrade
        self.probed = False  # the probe answered: waiting GETs get a noop, so that the client can pause polling
        self.outbox: list[tuple[str, Outgoing | None]] = []  # packets waiting for the next GET (and their events)
        self.wakeup = asyncio.Event()  # something for a waiting GET
        self.drained = asyncio.Event()  # the outbox was taken
        self.polling = False  # a GET is waiting
        self.turn = asyncio.Lock()  # one of a reply and the mailbox writer at a time
        self.pong = asyncio.Event()
        self.ping_interval = settings.CALLS_SOCKETIO_PING_INTERVAL_SECS
        self.ping_timeout = settings.CALLS_SOCKETIO_PING_TIMEOUT_SECS
        self.signaling: SignalingSession | None = None  # the Socket.IO connection on "/"
        self.connecting = False
        self.closed = False
        self.writer: asyncio.Task | None = None
        self.tasks: list[asyncio.Task] = []
        self.attachments_to_skip = 0
        self.unconnected = True  # counted in the registry's unconnected sessions

    # -- the Engine.IO session -----------------------------------------------------

    def handshake(self) -> str:
        """The open packet, answered to the request that made the session."""
        return open_packet(
            self.sid,
            upgrades=[] if self.socket is not None else ["websocket"],
            ping_interval_ms=self.ping_interval * 1000,
            ping_timeout_ms=self.ping_timeout * 1000,
            max_payload=MAX_PAYLOAD,
        )

    def start(self) -> None:
        """Called once the handshake is on its way: the heartbeat, and the connect deadline."""
        self.tasks.append(self._spawn(self._heartbeat()))
        self.tasks.append(self._spawn(self._connect_deadline()))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task:
        return asyncio.get_running_loop().create_task(self._logged(coroutine))

    async def _logged(self, coroutine: Coroutine[Any, Any, None]) -> None:
        try:
            await coroutine
        except Exception:
            logger.exception("socket.io session failed sid=%s", self.sid)
            await self.close("reason=server-error")

    async def _send(self, packet: str, event: Outgoing | None = None) -> None:
        """Put one packet on its way to the client, over the transport of the moment
        (``event``: the server event it carries, kept for a resume until it is taken)."""
        if self.closed:
            return
        if self.socket is not None:
            await self.socket.send_packet(packet)
        else:
            self.outbox.append((packet, event))
            self.wakeup.set()

    async def _emit(self, caller: Caller, event: Outgoing) -> None:
        """Send a server event; as an event (not an acknowledgement) it carries the
        connection's next offset as its last argument (docs/protocol.md §6)."""
        text = event.text(SOCKETIO)
        if event.request_id is None:
            text = SOCKETIO.with_offset(text, caller.next_offset())
        await self._send(text, event)

    async def _heartbeat(self) -> None:
        """Engine.IO v4: the server pings; a client that does not answer within
        pingTimeout is gone (its participant leaves as ``disconnected``)."""
        while True:
            await asyncio.sleep(self.ping_interval)
            self.pong.clear()
            await self._send(PING)
            try:
                async with asyncio.timeout(self.ping_timeout):
                    await self.pong.wait()
            except TimeoutError:
                await self.close("reason=ping-timeout", lost=True)
                return

    async def _connect_deadline(self) -> None:
        """A session that never connects to "/" holds resources for nothing."""
        await asyncio.sleep(CONNECT_TIMEOUT_SECS)
        if self.signaling is None and not self.connecting:
            await self.close("reason=no-connect")

    async def poll(self) -> list[str]:
        """Called for a long-polling GET: the packets to answer it with, once there are
        any; a noop if nothing came within pingInterval, or while an upgrade is under way."""
        if self.polling:
            raise OverlappingPoll
        self.polling = True
        try:
            async with asyncio.timeout(self.ping_interval):
                while not self.outbox and not self.probed and self.socket is None:
                    self.wakeup.clear()
                    await self.wakeup.wait()
        except TimeoutError:
            return [NOOP]
        finally:
            self.polling = False
        if not self.outbox:
            return [NOOP]
        packets, self.outbox = [packet for packet, _ in self.outbox], []
        self.drained.set()
        if self.closed:  # its last packets are taken: the session is gone
            self.registry.discard(self)
        return packets

    async def receive(self, packet: str) -> None:
        """Called for each Engine.IO packet the client sends, over either transport."""
        if self.closed:
            return
        kind = packet[:1]
        if kind == MESSAGE:
            await self._on_message(packet)
        elif kind == PONG:
            self.pong.set()
        elif kind == CLOSE:
            await self.close("reason=client-close")
        elif kind == BINARY_MESSAGE:
            await self.receive_binary()
        elif kind not in (PING, NOOP):  # a v4 client sends no ping; a noop means nothing
            reason = UPGRADE_MISPLACED if kind == UPGRADE else NOT_ENGINE_IO
            await self._handle(packet, lambda _: unreadable(reason))

    async def receive_binary(self) -> None:
        """Called for each binary Engine.IO message: the attachments of a binary packet,
        which was refused, or a binary frame, which is ``invalid-message``."""
        if self.attachments_to_skip:
            self.attachments_to_skip -= 1
            return
        await self._handle(None, lambda _: unreadable("binary"))

    # -- the upgrade to a websocket --------------------------------------------------

    def may_probe(self) -> bool:
        return not self.closed and self.socket is None and self.probe is None

    def start_probe(self, socket: Socket) -> None:
        """Called when a websocket with this session's sid opens."""
        self.probe = socket
        self.tasks.append(self._spawn(self._upgrade_deadline(socket)))

    def probe_answered(self, socket: Socket) -> None:
        """Called once the probe's ``3probe`` is sent: the waiting GET is answered, so
        that the client can pause polling and send ``5`` on the websocket."""
        if socket is self.probe:
            self.probed = True
            self.wakeup.set()

    async def upgrade(self, socket: Socket) -> bool:
        """Called for ``5`` on the probe: the websocket carries the session from now on,
        starting with what waited for a GET. ``False`` if it is no longer the probe."""
        if socket is not self.probe or not self.probed or self.closed:
            return False
        async with self.turn:
            self.socket, self.probe, self.probed = socket, None, False
            waiting, self.outbox = self.outbox, []
            for packet, _ in waiting:
                await socket.send_packet(packet)
        self.wakeup.set()
        self.drained.set()
        return True

    async def _upgrade_deadline(self, socket: Socket) -> None:
        await asyncio.sleep(UPGRADE_TIMEOUT_SECS)
        if socket is self.probe:
            await socket.close_socket()

    async def transport_closed(self, socket: Socket, *, lost: bool) -> None:
        """Called when a websocket of this session closes, whoever closed it (``lost``:
        without a close frame)."""
        if socket is self.socket:
            await self.close("reason=transport-close", lost=lost)
        elif socket is self.probe:
            self.probe, self.probed = None, False

    # -- the Socket.IO connection on "/" ---------------------------------------------

    async def _on_message(self, text: str) -> None:
        try:
            packet = decode_packet(text[1:])
        except PacketError as exc:
            reason = str(exc)
            await self._handle(text, lambda _: unreadable(reason))
            return
        if packet.type is PacketType.CONNECT:
            await self._connect(packet)
        elif packet.type is PacketType.DISCONNECT and packet.namespace == MAIN_NAMESPACE:
            await self._end_connection("reason=client-disconnect")
        else:
            if packet.type in (PacketType.BINARY_EVENT, PacketType.BINARY_ACK):
                self.attachments_to_skip = min(packet.attachments, MAX_SKIPPED_ATTACHMENTS)
            await self._handle(text, lambda _: parse_event(packet))

    async def _handle(self, text: str | None, parse: Parser) -> None:
        """A packet for the rules (with the checks of ``calls.session``), and its reply."""
        signaling = self.signaling
        if signaling is None:
            return  # not connected to "/": no event is handled
        async with self.turn:
            outcome = await signaling.handle(text, parse)
            if outcome is not None and not isinstance(outcome, int):
                await self._emit(signaling.caller, outcome)
        if isinstance(outcome, int):
            await self.close_for(outcome)

    async def _connect(self, packet: Packet) -> None:
        """Socket.IO CONNECT: authenticate as the native handshake does, then answer
        ``40{"sid": socketId, "pid": pid}`` and ``webrtc:connected``, or a connect_error.
        With ``{pid, offset}`` (socket.io-client recovering) or ``{resume}`` it resumes
        the parked participant (docs/protocol.md §6): same sid and pid, then
        ``webrtc:resumed`` and the missed events."""
        if packet.namespace != MAIN_NAMESPACE:
            await self._send(connect_error_packet(INVALID_NAMESPACE, packet.namespace))
            return
        if self.signaling is not None or self.connecting:
            return  # one connection per session; socket.io-client never asks twice
        try:
            auth = _connect_payload_decoder.decode(packet.payload) if packet.payload else {}
        except (msgspec.DecodeError, msgspec.ValidationError):
            await self._send(connect_error_packet(INVALID_CONNECT))
            return
        self.connecting = True
        mailbox = delivery.Mailbox()
        try:
            authentication = await self._authenticate(auth)
            opened: SignalingSession | int | None = refusal(authentication.user, throttled=authentication.throttled)
            if opened is None:
                resume_token = auth.get("resume") or auth.get("pid")
                if not isinstance(resume_token, str):
                    resume_token = None
                opened = await open_session(mailbox, authentication.user, authentication.expires_at, resume_token)
        except Exception:
            logger.exception("socket.io connect failed sid=%s", self.sid)
            await self._send(connect_error_packet(SERVER_FAILED))
            return
        finally:
            self.connecting = False
        if isinstance(opened, int):
            await self._send(connect_error_packet(CONNECT_ERRORS[opened]))
            return
        if self.closed:
            await opened.closed("reason=closed-while-connecting", lost=True)
            return
        caller = opened.caller
        self.registry.settled(self)
        async with self.turn:
            self.signaling = opened
            await self._send(connect_packet(caller.socket_id, socketio_pid(caller)))
            for event in opened.greeting:
                await self._emit(caller, event)
        self.writer = self._spawn(self._write_mailbox(opened, mailbox))
        logger.info("connect %s transport=socket.io", caller.log_context())

    async def _authenticate(self, auth: dict[str, Any]) -> Authentication:
        """The connect packet's ``token`` or ``ticket``; else what the handshake presented,
        in the native order (``?token=``, ``?ticket=``, ``Authorization``, the cookie)."""
        scope = self.scope
        credential = auth_credential(auth)
        if credential is not None:
            return await authenticate(client_address(scope), credential)
        if scope["type"] == "websocket":
            # The auth middleware has authenticated this handshake already.
            user = scope.get("user")
            if user is None or not user.is_authenticated:
                user = None
            return Authentication(user, scope.get(AUTH_EXPIRES_AT), bool(scope.get(AUTH_THROTTLED)))
        credential = presented_credential(scope)
        session = cookie_session(scope, _session_store()) if credential is None else None
        return await authenticate(client_address(scope), credential, session)

    async def _write_mailbox(self, signaling: SignalingSession, mailbox: delivery.Mailbox) -> None:
        """Send what the rules address to the connection, in order; a close code closes."""
        while True:
            await mailbox.wait()  # taken only when it can be sent (``Mailbox.wait``)
            while self._outbox_full() and not isinstance(mailbox.peek(), int):  # a close goes at once
                self.drained.clear()
                await self.drained.wait()
            async with self.turn:
                item = mailbox.take()
                if isinstance(item, Outgoing) and self.signaling is signaling:
                    await self._emit(signaling.caller, item)
            if isinstance(item, int):
                await self.close_for(item)
                return

    def _outbox_full(self) -> bool:
        """A long-polling client has not taken its fill of events yet."""
        return self.socket is None and len(self.outbox) >= OUTBOX_LIMIT and not self.closed

    async def close_for(self, code: int) -> None:
        """Called when the rules close the connection with a native close code. After 4401
        the client is sent a Socket.IO DISCONNECT, so that it does not reconnect without
        a new credential; after any other the session just closes, and it reconnects
        (after 1001, this process stopping, to resume elsewhere)."""
        last_packets = [DISCONNECT_PACKET] if code == CloseCode.UNAUTHENTICATED else []
        await self.close(f"code={code}", last_packets, lost=code == CloseCode.GOING_AWAY)

    async def _end_connection(self, how: str, *, lost: bool = False, unsent: Sequence[Outgoing] = ()) -> None:
        """The Socket.IO connection ends (the Engine.IO session may go on): leave the
        room, or, ``lost``, be parked for a resume with the events its client never took
        (``unsent``)."""
        signaling = self.signaling
        if signaling is None:
            return
        self.signaling = None
        writer, self.writer = self.writer, None
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
        if lost and unsent and signaling.caller.mailbox is not None:
            signaling.caller.mailbox.put_back(unsent)
        await signaling.closed(how, lost=lost)

    async def close(self, how: str, last_packets: Sequence[str] = (), *, lost: bool = False) -> None:
        """Called once when the session ends, whoever ends it: the client is sent
        ``last_packets`` (a websocket is closed after them; a long-polling client gets
        them and a close packet with its next GET, if it comes within pingTimeout), and
        the Socket.IO connection leaves its room, or, ``lost`` (no answer to pings, a
        transport gone without a close frame, this process stopping), is parked."""
        if self.closed:
            return
        self.closed = True
        self.registry.settled(self)
        current = asyncio.current_task()
        unsent: list[Outgoing] = []
        for task in (*self.tasks, self.writer):
            if task is not None and task is not current:
                task.cancel()
        try:
            socket, probe = self.socket, self.probe
            if socket is not None:
                self.registry.discard(self)
                for packet in last_packets:
                    await socket.send_packet(packet)
                await socket.close_socket()
            else:
                if lost:  # its events are parked with the participant, not left for a GET
                    unsent = [event for _, event in self.outbox if event is not None and event.request_id is None]
                    self.outbox = []
                self.outbox.extend((packet, None) for packet in [*last_packets, CLOSE])
                self.wakeup.set()
                self.drained.set()
                asyncio.get_running_loop().call_later(self.ping_timeout, self.registry.discard, self)
            if probe is not None:
                await probe.close_socket()
        finally:
            await self._end_connection(how, lost=lost, unsent=unsent)
            logger.debug("socket.io session closed %s sid=%s", how, self.sid)


def auth_credential(auth: dict[str, Any]) -> tuple[str, str] | None:
    """The credential of a connect packet's auth object: ``{"token"}`` or ``{"ticket"}``.
    A value that is not a string is a failed credential, as a malformed token is."""
    for kind in ("token", "ticket"):
        value = auth.get(kind)
        if value is not None:
            return kind, value if isinstance(value, str) else ""
    return None


_session_stores: dict[str, type[SessionBase]] = {}


def _session_store() -> type[SessionBase]:
    engine = settings.SESSION_ENGINE
    store = _session_stores.get(engine)
    if store is None:
        store = _session_stores[engine] = import_module(engine).SessionStore
    return store


class EngineSessions:
    """The Engine.IO sessions of this process, by sid: the one owner of every session
    (a long-polling client must come back to the process that holds its session)."""

    def __init__(self) -> None:
        self._by_sid: dict[str, EngineSession] = {}
        self.unconnected = 0

    def open(self, scope: dict[str, Any], socket: Socket | None = None) -> EngineSession | None:
        """Called for a handshake: a new session, over long-polling or ``socket``; ``None``
        when too many sessions wait for their connect (the handshake is refused). Its sid
        is random (120 bits) and is not the Socket.IO ``socket.id``."""
        if self.unconnected >= MAX_UNCONNECTED_SESSIONS:
            logger.warning("socket.io handshake refused: %d sessions wait for their connect", self.unconnected)
            return None
        session = EngineSession(self, secrets.token_urlsafe(15), scope, socket)
        self._by_sid[session.sid] = session
        self.unconnected += 1
        return session

    def settled(self, session: EngineSession) -> None:
        """Called when a session connects to "/" or closes, whichever comes first."""
        if session.unconnected:
            session.unconnected = False
            self.unconnected -= 1

    def get(self, sid: str) -> EngineSession | None:
        return self._by_sid.get(sid)

    def discard(self, session: EngineSession) -> None:
        if self._by_sid.get(session.sid) is session:
            del self._by_sid[session.sid]

    def __len__(self) -> int:
        return len(self._by_sid)


sessions = EngineSessions()
