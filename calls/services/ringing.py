"""Ringing (docs/protocol.md §9): ring a group's members for a call, and end each
callee's ring once.

Rings live in presence, so that every process sees them: a callee's connections on any
process are rung, any of them may answer, and the timeout is presence's (any process
ends a ring whose time is up, each once), which holds when the ringer's process dies.
"""

from __future__ import annotations

import logging
import secrets
import time

from django.conf import settings

from calls import delivery, history, host, metrics, process
from calls.presence.base import PresenceUnavailable, RingEnd, RingRecord
from calls.protocol import (
    ErrorCode,
    Event,
    IncomingCall,
    Outgoing,
    Ring,
    RingCancel,
    RingEnded,
    RingOutcome,
    RingReply,
    RingStarted,
    RingUpdated,
    SignalingError,
    iso_utc,
)
from calls.services.caller import Caller, own_room, participant_data

logger = logging.getLogger("calls")

NO_GROUP = "Only a group's call can ring: this call has no group."
NOT_MEMBERS = "Only members of the call's group can be rung."
RING_NOT_FOUND = "There is no such ring for you: it is unknown, over, or not yours."
REPLIES = {"accept": RingOutcome.ACCEPTED, "decline": RingOutcome.DECLINED}


async def ring(caller: Caller, request: Ring) -> RingStarted:
    """Ring the group's members who are not in the call (or ``userIds`` of them)."""
    session, in_room, me = await own_room(caller, request.callRoomId)
    if session.group_id is None:
        raise SignalingError(ErrorCode.FORBIDDEN, NO_GROUP)
    members = await host.in_lookup_thread(host.member_ids_of_group)(session.group_id)
    wanted = (
        list(dict.fromkeys(request.userIds))
        if request.userIds is not None
        else sorted(members, key=lambda user_id: (len(user_id), user_id))
    )
    if not set(wanted) <= members:
        raise SignalingError(ErrorCode.FORBIDDEN, NOT_MEMBERS, details={"userIds": sorted(set(wanted) - members)})
    presence = process.current().presence
    present = {m.participant.user_id for m in in_room} | {caller.user_id}
    expires_ms = int((time.time() + settings.CALLS_RING_TIMEOUT_SECS) * 1000)
    record = RingRecord(
        secrets.token_urlsafe(12),
        session.key,
        session.room_id,
        session.group_id,
        str(session.metadata.get("callType", "video")),
        session.session_id,
        me,
        expires_ms,
    )
    rung = await presence.start_ring(record, [u for u in wanted if u not in present])
    expires_at = iso_utc(expires_ms / 1000)
    if rung:
        process.current().writer.submit(
            history.record_ring,
            session_id=record.session_id,
            ring_id=record.ring_id,
            ringer_user_id=caller.user_id,
            callee_user_ids=rung,
            started_at=iso_utc(time.time()),
            expires_at=expires_at,
        )
        incoming = incoming_call(record)
        for user_id in rung:
            await delivery.deliver(await presence.connections_of(user_id=user_id), incoming)
        metrics.RINGS.inc(len(rung))
    logger.info("ring room=%s %s rung=%s", caller.room_id, caller.log_context(), ",".join(rung))
    return RingStarted(ringId=record.ring_id, callRoomId=record.room_id, userIds=rung, expiresAt=expires_at)


def incoming_call(record: RingRecord) -> Outgoing:
    return Outgoing(
        Event.INCOMING_CALL,
        IncomingCall(
            ringId=record.ring_id,
            callRoomId=record.room_id,
            groupId=record.group_id,
            callType=record.call_type,
            expiresAt=iso_utc(record.expires_at_ms / 1000),
            from_=participant_data(record.ringer),
        ),
    )


async def reply(caller: Caller, request: RingReply) -> None:
    """The callee answers on one of its connections; all of them are told it ended."""
    ends = await process.current().presence.end_rings(
        outcome=REPLIES[request.response], ring_id=request.ringId, user_id=caller.user_id
    )
    if not ends:
        raise SignalingError(ErrorCode.RING_NOT_FOUND, RING_NOT_FOUND)
    await ended(ends)


async def cancel(caller: Caller, request: RingCancel) -> None:
    """The ringer's user takes its ring back: every callee still rung is told."""
    ends = await process.current().presence.end_rings(
        outcome=RingOutcome.CANCELLED, ring_id=request.ringId, ringer_user_id=caller.user_id
    )
    if not ends:
        raise SignalingError(ErrorCode.RING_NOT_FOUND, RING_NOT_FOUND)
    await ended(ends)


async def ended(ends: list[RingEnd]) -> None:
    """Tell each callee whose ring ended (every connection) and the room (``ring-updated``)."""
    presence = process.current().presence
    for end in ends:
        record = end.ring
        outcome = RingOutcome(end.outcome)
        gone = Outgoing(Event.RING_ENDED, RingEnded(ringId=record.ring_id, callRoomId=record.room_id, reason=outcome))
        await delivery.deliver(await presence.connections_of(user_id=end.user_id), gone)
        update = RingUpdated(ringId=record.ring_id, callRoomId=record.room_id, userId=end.user_id, status=outcome)
        members = await presence.members(room_key=record.room_key)
        await delivery.deliver([m.channel_name for m in members], Outgoing(Event.RING_UPDATED, update))
        process.current().writer.submit(
            history.record_ring_outcome,
            ring_id=record.ring_id,
            callee_user_id=end.user_id,
            outcome=outcome.value,
            at=iso_utc(time.time()),
        )
        metrics.RING_OUTCOMES.labels(outcome.value).inc()
        logger.info("ring ended room=%s ringId=%s userId=%s %s", record.room_id, record.ring_id, end.user_id, outcome)


async def expire_rings() -> int:
    """End the rings whose time is up as ``missed``; returns how many."""
    ends = await process.current().presence.expire_rings()
    await ended(ends)
    return len(ends)


async def incoming_calls(caller: Caller) -> list[Outgoing]:
    """``incoming-call`` for each ring ringing a connection's user as it connects."""
    try:
        records = await process.current().presence.rings_of(user_id=caller.user_id)
    except PresenceUnavailable as exc:
        logger.warning("rings not looked up, presence unavailable: %s", exc)
        return []
    return [incoming_call(record) for record in records]
