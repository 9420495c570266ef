"""Resume after a dropped connection (docs/protocol.md §6 and §5 rule 4).

A connection lost without a close frame, or closed with 1001 by a process that stops,
is *parked*: presence keeps its place in its room and buffers what is addressed to it,
where any process can take it over. Within ``CALLS_RESUME_GRACE_SECS`` a new connection
of the same user presenting its resume token takes over its ``socketId`` and room and
gets the buffered messages in order; after the grace it leaves as ``disconnected``,
announced by whichever process expires it first (presence hands each one to one caller).

Order. Messages routed before the park went to the old address; they may still be on
their way to this process (another process's publish) or waiting in the mailbox. The
mailbox is diverted: what it held is parked with the participant, and what reaches it
afterwards is kept *before* everything buffered since the park. With a channel layer that
presence publishes to, presence tells this process (a fence, on the same subscription)
once the address is switched, and nothing routed before the switch can come after it; a
resume waits for that (``seal``), at most ``SEAL_WAIT_SECS``.

The resume token is ``<socketId>.<epoch>.<mac>``: bound to the socketId and the user by
an HMAC of the server's secret, and single use: presence keeps the epoch of the token it
parked the participant with, and a resume gives the next epoch. A Socket.IO client's
``pid`` is the same without the epoch (``<socketId>.p.<mac>``): socket.io-client takes
``recovered`` from getting its own pid back, so it stays for the connection's life; it
resumes a parked participant once, as a token does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from django.conf import settings
from django.utils.crypto import constant_time_compare, salted_hmac

from calls import delivery, history, metrics, process
from calls.presence.base import Expired, Parking, PresenceUnavailable, ResumeStatus, Resumption
from calls.protocol import CloseCode, ErrorCode, Event, LeaveReason, Outgoing, Resumed, SignalingError
from calls.services.caller import Caller
from calls.services.rooms import announce_departure, persist

logger = logging.getLogger("calls")

SALT = "calls.resume"
PID_EPOCH = "p"
MAC_CHARS = 32  # 128 bits of HMAC-SHA256
SEAL_WAIT_SECS = 1.0  # how long a resume waits for messages routed before the park
TAKEOVER_WAIT_SECS = 2.0  # …or for the connection still holding the id to be parked
RETRY_SECS = 0.02
LATE_LINGER_SECS = 2.0  # a parked mailbox takes late messages this long past the grace
RESUME_FAILED = "That connection cannot be resumed; this is a new one: join the call again."
EXPIRY_INTERVAL_SECS = 1.0


def _mac(socket_id: str, user_id: str, epoch: str) -> str:
    return salted_hmac(SALT, f"{socket_id}:{user_id}:{epoch}", algorithm="sha256").hexdigest()[:MAC_CHARS]


def resume_token(caller: Caller) -> str:
    epoch = str(caller.epoch)
    return f"{caller.socket_id}.{epoch}.{_mac(caller.socket_id, caller.user_id, epoch)}"


def socketio_pid(caller: Caller) -> str:
    return f"{caller.socket_id}.{PID_EPOCH}.{_mac(caller.socket_id, caller.user_id, PID_EPOCH)}"


def read_token(token: str, user_id: str) -> tuple[str, int | None] | None:
    """The socketId and epoch (``None`` for a pid) of a token issued to ``user_id``;
    ``None`` if it is not one (garbage, forged, or another user's)."""
    socket_id, _, rest = token.partition(".")
    epoch, _, mac = rest.partition(".")
    if not socket_id or not mac or not (epoch == PID_EPOCH or (epoch.isdigit() and len(epoch) < 10)):
        return None
    if not constant_time_compare(mac, _mac(socket_id, user_id, epoch)):
        return None
    return socket_id, None if epoch == PID_EPOCH else int(epoch)


# -- parking ----------------------------------------------------------------------


@dataclass(slots=True)
class ParkedHere:
    """A connection this process parked, while late messages may still reach its mailbox."""

    caller: Caller
    late: deque[Outgoing | None] = field(default_factory=deque)  # None: the fence
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    sealed: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, item: Outgoing | None) -> None:
        self.late.append(item)
        self.wakeup.set()


async def park(caller: Caller) -> None:
    """Keep the caller's place for a resume; raises ``PresenceUnavailable`` (it did not
    happen: the caller must leave instead)."""
    state = process.current()
    caller.parked = True
    parked = ParkedHere(caller)
    pending = caller.mailbox.divert(parked.put) if caller.mailbox is not None else []
    # A fence needs presence to publish to this process's inbox (calls.delivery.forward).
    fence = state.inbox if state.forwardable else None
    if caller.session_id is not None:
        persist(history.record_relays, session_id=caller.session_id, counts=caller.counts.reset())
    state.parked[caller.socket_id] = parked  # a shutdown waits for it from now on
    try:
        await state.presence.park(
            Parking(
                caller.socket_id,
                caller.user_id,
                caller.epoch,
                caller.offset,
                settings.CALLS_RESUME_GRACE_SECS,
                settings.CALLS_RESUME_BUFFER,
                tuple(event.buffered() for event in pending),
                fence,
            )
        )
    except PresenceUnavailable:
        caller.parked = False
        parked.sealed.set()
        if state.parked.get(caller.socket_id) is parked:
            del state.parked[caller.socket_id]
        if caller.mailbox is not None:
            delivery.close_mailbox(caller.socket_id, caller.mailbox)
        raise
    if fence is None:
        parked.sealed.set()
    state.spawn(_keep_late(parked))
    logger.info("parked room=%s %s", caller.room_id, caller.log_context())


def fenced(socket_ids: list[str], epoch: int) -> None:
    """Presence switched these participants' addresses (``calls.delivery`` got the fence)."""
    parked_here = process.current().parked
    for socket_id in socket_ids:
        parked = parked_here.get(socket_id)
        if parked is not None and parked.caller.epoch == epoch:
            parked.put(None)


async def _keep_late(parked: ParkedHere) -> None:
    """Put what reaches a parked mailbox into presence, before what was buffered since
    the park (or on to the connection that resumed it), until the grace is over."""
    caller = parked.caller
    presence = process.current().presence
    deadline = time.monotonic() + settings.CALLS_RESUME_GRACE_SECS + LATE_LINGER_SECS
    try:
        while True:
            while parked.late:
                item = parked.late.popleft()
                if item is None:
                    await presence.seal(socket_id=caller.socket_id, epoch=caller.epoch)
                    parked.sealed.set()
                    continue
                now_at = await presence.buffer_late(
                    socket_id=caller.socket_id, user_id=caller.user_id, epoch=caller.epoch, message=item.buffered()
                )
                if now_at is not None:
                    await delivery.deliver([now_at], item)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            parked.wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await parked.wakeup.wait()
            except TimeoutError:
                continue
    except PresenceUnavailable as exc:
        logger.warning("late messages of a parked participant lost, presence unavailable: %s", exc)
    finally:
        parked.sealed.set()
        state = process.current()
        if state.parked.get(caller.socket_id) is parked:
            del state.parked[caller.socket_id]
        if caller.mailbox is not None:
            delivery.close_mailbox(caller.socket_id, caller.mailbox)


async def all_sealed(timeout_secs: float) -> bool:
    """Wait until every participant this process parked is sealed (a shutdown's last
    messages have reached presence); ``False`` if some were not within the time."""
    waiting = [p.sealed.wait() for p in process.current().parked.values() if not p.sealed.is_set()]
    if not waiting:
        return True
    try:
        async with asyncio.timeout(timeout_secs):
            await asyncio.gather(*waiting)
    except TimeoutError:
        return False
    return True


# -- resuming ---------------------------------------------------------------------


async def take_over(token: str, *, user_id: str, mailbox: delivery.Mailbox) -> tuple[str, Resumption] | None:
    """Take over the parked participant of ``token`` for a new connection of
    ``user_id`` whose mailbox is ``mailbox``: its socketId and resumption, or ``None`` if the token
    is refused (the connection then starts afresh). Waits while the participant's last
    messages may still arrive, and, when the id is still held by a live connection (a
    client that came back before its server noticed the old socket die), has that one
    parked first."""
    parsed = read_token(token, user_id)
    if parsed is None:
        return None
    socket_id, epoch = parsed
    state = process.current()
    channel = await delivery.address_of(socket_id)
    previous = state.mailboxes.get(socket_id)
    state.mailboxes[socket_id] = mailbox  # so that nothing sent to the new address is lost
    deadline = time.monotonic() + SEAL_WAIT_SECS
    closed_holder = False
    try:
        while True:
            late = time.monotonic() >= deadline
            resumption = await state.presence.resume(
                socket_id=socket_id, user_id=user_id, epoch=epoch, channel_name=channel, force=late
            )
            if resumption.status is ResumeStatus.LIVE and not closed_holder:
                # Close it as a stopping server would: it is parked, and then taken over;
                # only if the token is the one it holds (not the one a resume used up).
                closed_holder = True
                deadline = time.monotonic() + TAKEOVER_WAIT_SECS
                holder = resumption.channel or ""
                if delivery.is_local(holder):
                    holding = state.connections.get(socket_id)
                    if previous is not None and holding is not None and epoch in (None, holding.epoch):
                        previous.put_close(CloseCode.GOING_AWAY)
                    else:
                        break
                else:
                    await delivery.close([holder], CloseCode.GOING_AWAY, epoch=epoch)
            elif resumption.status not in (ResumeStatus.UNSEALED, ResumeStatus.LIVE) or late:
                break
            await asyncio.sleep(RETRY_SECS)
    except BaseException:
        _restore(socket_id, mailbox, previous)
        raise
    if resumption.status is not ResumeStatus.RESUMED:
        _restore(socket_id, mailbox, previous)
        logger.info("resume refused (%s) socketId=%s userId=%s", resumption.status.value, socket_id, user_id)
        return None
    return socket_id, resumption


def _restore(socket_id: str, mailbox: delivery.Mailbox, previous: delivery.Mailbox | None) -> None:
    """A refused resume: the id's mailbox is what it was, with what reached the new one."""
    mailboxes = process.current().mailboxes
    if mailboxes.get(socket_id) is not mailbox:
        return
    if previous is None:
        del mailboxes[socket_id]
        return
    mailboxes[socket_id] = previous
    for event in mailbox.divert(lambda _: None):
        previous.put_frame(event)
    mailbox.sink = None


def resumed(caller: Caller, resumption: Resumption) -> list[Outgoing]:
    """Set up a caller that took a participant over; returns ``webrtc:resumed`` and the
    missed messages, to send in order after ``webrtc:connected``."""
    session = resumption.session
    if session is not None:
        caller.enter(session)
        persist(history.record_resume, session_id=session.session_id, socket_id=caller.socket_id)
    caller.epoch = resumption.epoch + 1
    caller.offset = resumption.offset
    metrics.RESUMES.inc()
    metrics.RESUME_DROPPED.inc(resumption.dropped)
    missed = [Outgoing(event, None, encoded=data) for event, data in resumption.missed]
    logger.info(
        "resumed room=%s %s missed=%d dropped=%d",
        caller.room_id,
        caller.log_context(),
        len(missed),
        resumption.dropped,
    )
    notice = Resumed(socketId=caller.socket_id, callRoomId=caller.room_id, missed=len(missed))
    return [Outgoing(Event.RESUMED, notice), *missed]


def refused() -> Outgoing:
    metrics.RESUME_FAILED.inc()
    return Outgoing(Event.SIGNALING_ERROR, SignalingError(ErrorCode.RESUME_FAILED, RESUME_FAILED).payload())


# -- the end of the grace -----------------------------------------------------------


async def expire_parked() -> int:
    """Let the parked participants whose grace is over leave (``disconnected``, told
    once, by whichever process gets each first); returns how many."""
    presence = process.current().presence
    expired = await presence.expire_parked()
    for gone in expired:
        await _gone(gone)
    metrics.PARKED.set(await presence.parked_count())
    return len(expired)


async def _gone(gone: Expired) -> None:
    metrics.RESUME_DROPPED.inc(gone.dropped)
    departure = gone.departure
    if departure is None:
        return
    persist(history.record_leave, departure=departure, reason=LeaveReason.DISCONNECTED, counts=history.RelayCounts())
    await announce_departure(departure, LeaveReason.DISCONNECTED)
    logger.info(
        "not resumed room=%s socketId=%s userId=%s remaining=%d",
        departure.session.room_id,
        gone.socket_id,
        gone.user_id,
        len(departure.remaining),
    )


def expiry_interval_secs() -> float:
    """How often a process looks for participants whose grace is over (and rings)."""
    return min(EXPIRY_INTERVAL_SECS, max(settings.CALLS_RESUME_GRACE_SECS / 4, 0.1))
