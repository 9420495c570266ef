"""Delivery of events to connections, wherever they are served.

What is delivered is an event as a value (``calls.protocol.Outgoing``), which each
transport frames in its own wire format. Each connection has a mailbox in its process
and an address, ``<process inbox>#<socketId>``, which presence stores as the member's
``channel_name``. An event for a connection in this process goes straight into its
mailbox: no channel layer, no message dict, no task per event (the consumer's writer
task reads the mailbox). An event for connections in other processes goes through the
channel layer to each of those processes' inbox once, however many of its connections
it is for (with Redis presence, the route script publishes it: ``forward``), with its
data as JSON, and is put in their mailboxes there. With one process there is no inbox
and no channel layer on this path at all.

Figures (``python -m bench.run --scenarios S1 --no-bisect``) are at the end of
``deliver``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings

from calls import metrics, process
from calls.layers import DispatchingRedisPubSubChannelLayer
from calls.presence.base import PARKED_INBOX, Forward
from calls.protocol import Event, Outgoing

logger = logging.getLogger("calls")

MAILBOX_CAPACITY = 100  # frames waiting for one connection, as Channels' default channel capacity
LOCAL_INBOX = "local"  # the inbox name when the channel layer does not span processes
_DELIVER, _CLOSE = "calls.deliver", "calls.close"  # messages between processes' inboxes
FENCE = "calls.fence"  # from presence, once a participant of this process is parked
ENDS_MEMBERSHIP = frozenset({Event.KICKED, Event.CALL_ENDED})


class Mailbox:
    """What waits for one connection, in order: frames addressed to it (at most
    ``MAILBOX_CAPACITY``) and close requests (``int`` codes). Read by one task.

    Not an ``asyncio.Queue``: that is three deques and an event, ~3 KB for every
    connection, idle or not; this holds a deque only while something waits in it."""

    __slots__ = ("frames", "items", "reader", "sink")

    def __init__(self) -> None:
        self.items: deque[Outgoing | int] | None = None
        self.frames = 0
        self.reader: asyncio.Future[None] | None = None  # set while the reader waits
        self.sink: Callable[[Outgoing], None] | None = None  # once diverted

    def put_frame(self, event: Outgoing) -> bool:
        """Queue an event; ``False`` if the connection already has its fill waiting."""
        if self.sink is not None:
            self.sink(event)
            return True
        if self.frames >= MAILBOX_CAPACITY:
            return False
        self.frames += 1
        self._put(event)
        return True

    def put_close(self, code: int) -> None:
        """Queue a request to close the connection; it always goes in."""
        self._put(code)

    def put_back(self, events: Iterable[Outgoing]) -> None:
        """Put events that were taken but never reached the client back in front."""
        if self.sink is not None:
            for event in events:
                self.sink(event)
            return
        events = list(events)
        self.items = deque([*events, *(self.items or ())])
        self.frames += len(events)

    def divert(self, sink: Callable[[Outgoing], None]) -> list[Outgoing]:
        """Its connection is gone but its participant is kept (parked): the frames
        waiting here are taken out and returned, and from now on each new one goes to
        ``sink`` (close requests still wait for the reader)."""
        waiting = [item for item in self.items or () if not isinstance(item, int)]
        closes = [item for item in self.items or () if isinstance(item, int)]
        self.items = deque(closes) if closes else None
        self.frames = 0
        self.sink = sink
        return waiting

    def _put(self, item: Outgoing | int) -> None:
        if self.items is None:
            self.items = deque()
        self.items.append(item)
        if self.reader is not None and not self.reader.done():
            self.reader.set_result(None)

    async def wait(self) -> None:
        """Until something waits here. A writer takes it only once it may send it: a
        frame taken and then not sent (its socket closed meanwhile, its task cancelled)
        would be lost to a resume, which gets what is still here."""
        while not self.items:
            self.reader = asyncio.get_running_loop().create_future()
            try:
                await self.reader
            finally:
                self.reader = None

    def peek(self) -> Outgoing | int | None:
        """The next item, left where it is."""
        return self.items[0] if self.items else None

    def take(self) -> Outgoing | int | None:
        """The next item, if any (a diversion may have taken them since ``wait``)."""
        if not self.items:
            return None
        item = self.items.popleft()
        if not self.items:
            self.items = None
        if type(item) is not int:
            self.frames -= 1
        return item


async def open_mailbox(socket_id: str, mailbox: Mailbox) -> str:
    """Register a connection's mailbox; returns its address."""
    process.current().mailboxes[socket_id] = mailbox
    return await address_of(socket_id)


async def address_of(socket_id: str) -> str:
    """The address of this process's connection ``socket_id``."""
    return f"{await _inbox_name()}#{socket_id}"


def close_mailbox(socket_id: str, mailbox: Mailbox | None = None) -> None:
    """Unregister a connection's mailbox (only if it is ``mailbox``, when given: a
    resumed connection may have registered its own under the same id since)."""
    mailboxes = process.current().mailboxes
    if mailbox is None or mailboxes.get(socket_id) is mailbox:
        mailboxes.pop(socket_id, None)


def is_local(address: str) -> bool:
    return address.rpartition("#")[0] == process.current().inbox


async def deliver(addresses: Iterable[str], event: Outgoing) -> int:
    """Send one event to each address; return how many could not take it (a
    full mailbox here, or an unreachable channel layer). A frame for a connection that
    has just closed counts as delivered: it has left, or is about to leave, the room."""
    undelivered = 0
    here, remote = _sorted(addresses)
    for socket_id, mailbox in here:
        if event.event in ENDS_MEMBERSHIP:
            _out_of_room(socket_id, event)
        if not mailbox.put_frame(event):
            undelivered += 1
            logger.warning("mailbox full, frame refused socketId=%s", socket_id)
    for inbox, socket_ids in remote.items():
        try:
            if inbox == PARKED_INBOX:  # kept in presence until they resume
                resumed = await process.current().presence.buffer(socket_ids=socket_ids, message=event.buffered())
                if resumed:  # since they were routed to: where they are now
                    undelivered += await deliver(resumed, event)
                continue
            message = {"type": _DELIVER, "to": socket_ids, "event": event.event, "data": event.encoded_data()}
            await get_channel_layer().send(inbox, message)
        except Exception as exc:  # the layer's backend is unreachable, or the inbox full
            undelivered += len(socket_ids)
            logger.warning("frame not delivered to %d connections of inbox %s: %s", len(socket_ids), inbox, exc)
    return undelivered


def deliver_here(socket_id: str, event: Outgoing) -> bool:
    """``deliver`` to one connection of this process, known to be here (a relay between
    two of its connections): without building and splitting an address. ``False``
    when its mailbox is full; a connection that has just closed counts as delivered."""
    mailbox = process.current().mailboxes.get(socket_id)
    if mailbox is None or mailbox.put_frame(event):
        return True
    logger.warning("mailbox full, frame refused socketId=%s", socket_id)
    return False


def forward(event: Outgoing) -> Forward | None:
    """What lets presence publish ``event`` to other processes' inboxes while it routes,
    saving a round trip to Redis: possible when the channel layer is channels_redis's
    pub/sub layer without encryption, whose messages are plain msgpack."""
    state = process.current()
    if not state.forwardable or state.inbox is None:
        return None
    return Forward(state.inbox, _DELIVER, event.event, event.encoded_data())


async def close(addresses: Iterable[str], code: int, *, epoch: int | None = None) -> None:
    """Ask the transports holding these addresses to close them with ``code`` (with
    ``epoch``: only a connection whose resume token is of that epoch)."""
    here, remote = _sorted(addresses)
    for socket_id, mailbox in here:
        if _of_epoch(socket_id, epoch):
            mailbox.put_close(code)
    for inbox, socket_ids in remote.items():
        if inbox == PARKED_INBOX:
            continue  # nothing to close
        with contextlib.suppress(Exception):
            message = {"type": _CLOSE, "to": socket_ids, "code": code, "epoch": epoch}
            await get_channel_layer().send(inbox, message)


def _of_epoch(socket_id: str, epoch: int | None) -> bool:
    if epoch is None:
        return True
    caller = process.current().connections.get(socket_id)
    return caller is not None and caller.epoch == epoch


def _out_of_room(socket_id: str, event: Outgoing) -> None:
    """A connection of this process was put out of its room by another's request (kicked,
    the call ended): its caller forgets the room now, before its next request."""
    state = process.current()
    caller = state.connections.get(socket_id)
    if caller is not None and caller.room_id == _room_decoder.decode(event.encoded_data()).callRoomId:
        caller.exit()
        state.presence.forget(socket_id)


class _RoomOf(msgspec.Struct):
    callRoomId: str


_room_decoder = msgspec.json.Decoder(_RoomOf)


def _sorted(addresses: Iterable[str]) -> tuple[list[tuple[str, Mailbox]], dict[str, list[str]]]:
    """The open mailboxes of this process's addresses, and the others' socketIds by
    inbox. An address of this process without a mailbox has just closed: skipped."""
    state = process.current()
    here: list[tuple[str, Mailbox]] = []
    remote: dict[str, list[str]] = {}
    for address in addresses:
        inbox, _, socket_id = address.rpartition("#")
        if inbox != state.inbox:
            remote.setdefault(inbox, []).append(socket_id)
        elif (mailbox := state.mailboxes.get(socket_id)) is not None:
            here.append((socket_id, mailbox))
    return here, remote


async def _inbox_name() -> str:
    """This process's inbox; created, with the task that reads it, at first use on a
    channel layer shared between processes."""
    state = process.current()
    if state.inbox_name is None:
        state.inbox_name = future = asyncio.get_running_loop().create_future()
        try:
            layer = get_channel_layer()
            if layer is None or isinstance(layer, InMemoryChannelLayer):
                name = LOCAL_INBOX
            else:
                name = await layer.new_channel("calls.")
                if isinstance(layer, DispatchingRedisPubSubChannelLayer):
                    layer.attach(name, _take)
                else:
                    state.spawn(_read_inbox(layer, name))
                config = settings.CHANNEL_LAYERS["default"].get("CONFIG", {})
                state.forwardable = isinstance(layer, RedisPubSubChannelLayer) and not config.get(
                    "symmetric_encryption_keys"
                )
        except BaseException as exc:
            state.inbox_name = None
            future.set_exception(exc)
            raise
        future.set_result(name)
    state.inbox = await state.inbox_name
    return state.inbox


async def _read_inbox(layer: Any, inbox: str) -> None:
    """Read the inbox on a layer that cannot hand messages over (``core``)."""
    while True:
        try:
            message = await layer.receive(inbox)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the backend is unreachable: presence reports it too
            logger.warning("inbox unreadable: %s", exc)
            await asyncio.sleep(1.0)
            continue
        _take(message)


def _take(message: dict[str, Any]) -> None:
    """Put what another process sent into this process's mailboxes: one event for all
    its recipients here, its data kept as the JSON it came as."""
    if message["type"] == FENCE:
        from calls.services import resume

        resume.fenced(message["to"], int(message["epoch"]))
        return
    event = None if message["type"] == _CLOSE else Outgoing(message["event"], None, encoded=message["data"])
    mailboxes = process.current().mailboxes
    for socket_id in message["to"]:
        mailbox = mailboxes.get(socket_id)
        if mailbox is None:
            continue
        if event is not None and event.event in ENDS_MEMBERSHIP:
            _out_of_room(socket_id, event)
        if event is None:
            if _of_epoch(socket_id, message.get("epoch")):
                mailbox.put_close(message["code"])
        elif not mailbox.put_frame(event):
            # The sender, in another process, cannot be told: count it.
            metrics.DROPPED.inc()
            logger.warning("mailbox full, frame from another process dropped socketId=%s", socket_id)
