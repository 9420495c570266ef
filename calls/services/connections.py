"""Connections: opened (or resumed), authenticated again, closed (or parked), lost with
their process, and all closed at shutdown (docs/protocol.md §2, §5 rule 4 and §6)."""

from __future__ import annotations

import asyncio
import logging

from django.conf import settings

from calls import delivery, history, host, metrics, process
from calls.history import RelayCounts, record_leave
from calls.presence.base import Departure, PresenceUnavailable
from calls.protocol import (
    CloseCode,
    Connected,
    ErrorCode,
    Event,
    LeaveReason,
    Outgoing,
    RefreshAuth,
    RoomLeft,
    SignalingError,
    iso_utc,
)
from calls.services import resume, ringing
from calls.services.caller import Caller, new_socket_id
from calls.services.rooms import announce_departure, leave_current_room, persist

logger = logging.getLogger("calls")

CLOSED_LEAVE_RETRY_SECS = 1.0  # how often a leave that failed for a presence outage is retried


CLOSED_LEAVE_RETRY_LIMIT = 3600  # …and for how many attempts at most
REFRESH_REFUSED = "That token is not a valid access token of this connection's user."

metrics.CONNECTIONS.set_function(lambda: len(process.current().connections))
metrics.PARTICIPANTS.set_function(lambda: sum(1 for c in process.current().connections.values() if c.room_id))
metrics.ROOMS.set_function(lambda: len({c.room_key for c in process.current().connections.values() if c.room_key}))


async def connection_opened(
    mailbox: delivery.Mailbox,
    *,
    user_id: str,
    username: str,
    display_name: str,
    is_staff: bool = False,
    auth_expires_at: float | None = None,
    resume_token: str | None = None,
) -> tuple[Caller, list[Outgoing]] | None:
    """A transport accepted an authenticated connection; it reads ``mailbox`` for what
    the rules address to it (frames, and close codes). Returns its caller and what to
    send it first (``webrtc:connected``, then, for a resume, ``webrtc:resumed`` and the
    missed messages, or the ``resume-failed`` error); ``None`` if the user already holds
    ``CALLS_MAX_CONNECTIONS_PER_USER`` connections on all processes (close 4409)."""
    taken = None
    if resume_token is not None:
        taken = await resume.take_over(resume_token, user_id=user_id, mailbox=mailbox)
    if taken is not None:
        socket_id = taken[0]
        channel_name = await delivery.address_of(socket_id)
    else:
        socket_id = new_socket_id()
        channel_name = await delivery.open_mailbox(socket_id, mailbox)
        if not await _counted(user_id, socket_id, channel_name):
            delivery.close_mailbox(socket_id)
            return None
    caller = Caller(
        socket_id,
        channel_name,
        user_id,
        username,
        display_name,
        auth_expires_at=auth_expires_at,
        is_staff=is_staff,
        mailbox=mailbox,
    )
    process.current().connections[socket_id] = caller
    if taken is not None:
        resumed = resume.resumed(caller, taken[1])  # (which gives it its next resume token)
        return caller, [connected_event(caller), *resumed]
    refused = [resume.refused()] if resume_token is not None else []
    # A user rung right now hears it on every connection, this one too (docs/protocol.md §9).
    return caller, [connected_event(caller), *refused, *await ringing.incoming_calls(caller)]


async def _counted(user_id: str, socket_id: str, channel_name: str) -> bool:
    """Count a new connection of the user on all processes; ``False``: it holds too many."""
    try:
        return await process.current().presence.open_connection(
            user_id=user_id,
            socket_id=socket_id,
            channel_name=channel_name,
            limit=settings.CALLS_MAX_CONNECTIONS_PER_USER,
        )
    except PresenceUnavailable as exc:  # joins fail until it is back; the connection may wait for it
        logger.warning("connection not counted, presence unavailable: %s", exc)
        return True


def connected_event(caller: Caller) -> Outgoing:
    """``webrtc:connected`` (docs/protocol.md §2)."""
    expires = caller.auth_expires_at
    return Outgoing(
        Event.CONNECTED,
        Connected(
            socketId=caller.socket_id,
            userId=caller.user_id,
            resumeToken=resume.resume_token(caller),
            authExpiresAt=iso_utc(expires) if expires is not None else None,
        ),
    )


def open_connections() -> list[Caller]:
    return list(process.current().connections.values())


async def refresh_auth(caller: Caller, request: RefreshAuth) -> None:
    """A fresh access token of the same user extends the connection's authentication
    (docs/protocol.md §2); anything else is ``forbidden`` and changes nothing."""
    user, expires_at = await host.in_lookup_thread(host.user_and_expiry_from_token)(request.token)
    if user is None or str(user.pk) != caller.user_id:
        raise SignalingError(ErrorCode.FORBIDDEN, REFRESH_REFUSED)
    caller.auth_expires_at = expires_at


async def connection_closed(caller: Caller, *, lost: bool = False) -> None:
    """Rule 4: a connection its client closed leaves its room at once; one ``lost``
    without a close frame (or closed by this process as it stops) is parked for a resume
    (§6). If presence is unreachable, the leave is retried in the background until it
    is, so that no ghost stays behind."""
    state = process.current()
    if state.connections.pop(caller.socket_id, None) is not None and not state.connections and state.all_closed:
        state.all_closed.set()
    if caller.parked:
        return  # parked already, by the shutdown
    if (lost or state.all_closed is not None) and settings.CALLS_RESUME_GRACE_SECS > 0:
        try:
            await resume.park(caller)
            return
        except PresenceUnavailable as exc:
            logger.warning("not parked, presence unavailable: %s %s", exc, caller.log_context())
    delivery.close_mailbox(caller.socket_id, caller.mailbox)
    reason = LeaveReason.DISCONNECTED
    try:
        await _release(caller, reason)
    except PresenceUnavailable as exc:
        logger.warning("leave deferred, presence unavailable: %s %s", exc, caller.log_context())
        process.current().spawn(_retry_release(caller, reason))


async def _park_or_release(caller: Caller) -> None:
    if caller.parked:
        return
    if settings.CALLS_RESUME_GRACE_SECS > 0:
        try:
            await resume.park(caller)
            return
        except PresenceUnavailable as exc:
            logger.warning("not parked at shutdown, presence unavailable: %s %s", exc, caller.log_context())
    try:
        await _release(caller, LeaveReason.DISCONNECTED)
    except PresenceUnavailable as exc:
        logger.warning("shutdown without leaving the room, presence unavailable: %s %s", exc, caller.log_context())


async def _release(caller: Caller, reason: LeaveReason) -> None:
    """What presence holds for a closed connection: its place in a room, and its count."""
    await leave_current_room(caller, reason)
    await process.current().presence.close_connection(user_id=caller.user_id, socket_id=caller.socket_id)


async def remove_from_group_room(caller: Caller) -> None:
    """The caller's user is no longer a member of its room's group: it leaves the room
    (the others are told ``removed``) and is told ``room-left``."""
    room_id = caller.room_id
    await leave_current_room(caller, LeaveReason.REMOVED)
    if room_id is not None:
        await delivery.deliver([caller.channel_name], Outgoing(Event.ROOM_LEFT, RoomLeft(callRoomId=room_id)))


async def _retry_release(caller: Caller, reason: LeaveReason) -> None:
    for _ in range(CLOSED_LEAVE_RETRY_LIMIT):
        await asyncio.sleep(CLOSED_LEAVE_RETRY_SECS)
        try:
            await _release(caller, reason)
            return
        except PresenceUnavailable:
            continue
    logger.error("gave up leaving after a presence outage %s", caller.log_context())


def flush_relay_counts() -> int:
    """Queue the relays counted so far by this process's participants for the history,
    so that a process that is killed loses at most one interval of them; returns how
    many participants had any."""
    flushed = 0
    for caller in open_connections():
        counts = caller.counts
        if caller.session_id is not None and counts.offers + counts.answers + counts.candidates:
            persist(history.record_relays, session_id=caller.session_id, counts=counts.reset())
            flushed += 1
    return flushed


async def participant_lost(departure: Departure) -> None:
    """Rule 4, last clause: a participant whose server process died leaves as ``lost``."""
    metrics.LOST.inc()
    persist(record_leave, departure=departure, reason=LeaveReason.LOST, counts=RelayCounts())
    # The record is written when the writer gets to it: the liveness beat that reaps
    # must never wait for the database (a backlog there once delayed it past the TTL,
    # and live processes then declared each other dead).
    await announce_departure(departure, LeaveReason.LOST)
    logger.info(
        "lost room=%s socketId=%s userId=%s remaining=%d",
        departure.session.room_id,
        departure.participant.socket_id,
        departure.participant.user_id,
        len(departure.remaining),
    )


async def shut_down_connections(timeout_secs: float) -> None:
    """Graceful shutdown, within ``timeout_secs``: every connection of this process is
    closed with 1001 first (nothing slow comes before it), then parked (§5 rule 4: the
    clients resume on another process, and the rooms see nothing), and the history
    writes are drained last."""
    state = process.current()
    state.all_closed = asyncio.Event()
    callers = open_connections()
    logger.info("shutting down %d connections", len(callers))
    await delivery.close([caller.channel_name for caller in callers], CloseCode.GOING_AWAY)
    try:
        async with asyncio.timeout(timeout_secs):
            await asyncio.gather(*(_park_or_release(caller) for caller in callers))
            if state.connections:
                await state.all_closed.wait()
            await resume.all_sealed(timeout_secs)
            await process.current().writer.drained()
    except TimeoutError:
        logger.warning(
            "shutdown timed out with %d connections open and %d history writes waiting",
            len(state.connections),
            process.current().writer.pending(),
        )
