"""Rooms: join, switch, leave (docs/protocol.md §5 rules 1 to 3), and what a departure
tells the room and records."""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any

from django.conf import settings

from calls import delivery, history, host, metrics, process
from calls.ice import ice_servers_for
from calls.presence.base import Departure, JoinOutcome, JoinStatus, Member, RoomSession
from calls.protocol import (
    ErrorCode,
    Event,
    JoinRoom,
    LeaveReason,
    LeaveRoom,
    MediaState,
    Outgoing,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    RingOutcome,
    RoomJoined,
    RoomLeft,
    SignalingError,
    iso_utc,
)
from calls.services import ringing
from calls.services.caller import NOT_IN_ROOM, Caller, participant_data

logger = logging.getLogger("calls")

FORBIDDEN_GROUP = "You are not a member of the group this call belongs to."


ROOM_FULL = "This call is full."


JOINS_RATE_LIMITED = "Too many joins; wait a moment before joining again."


HISTORY_BUSY = "The server is busy recording calls; try joining again in a moment."


ROOM_LOCKED = "This call is locked; only its moderators may join."


BANNED = "You were removed from this call and may not join it again yet."


async def room_join(caller: Caller, request: JoinRoom) -> RoomJoined:
    """Rules 1 and 2: create or join a room, leaving the current one first."""
    await _charge_join(caller)
    requested_group = (request.metadata or {}).get("groupId")
    me = caller.participant(request.media)
    metadata = dict(request.metadata or {})
    # The server's keys win over the creator's keys of the same name (docs/protocol.md §4).
    metadata |= {"callType": request.callType or "video", "createdAt": me.joined_at, "createdBy": caller.user_id}
    proposal = RoomSession(request.callRoomId, uuid.uuid4().hex, metadata, requested_group)

    async def join(role: str | None) -> JoinOutcome:
        # Staff and the group's owners and admins pass a lock (docs/protocol.md §10);
        # presence lets an ungrouped room's creator pass too.
        moderator = caller.is_staff or role in host.moderator_roles()
        return await process.current().presence.join(
            new_session=proposal,
            member=Member(me, caller.channel_name),
            capacity=settings.CALLS_MAX_PARTICIPANTS,
            group_ids=frozenset() if role is None else frozenset({requested_group or ""}),
            moderator=moderator,
        )

    # The group names the room (rule 1), so only a join that names one needs the
    # joiner's groups: a query, on the lookup threads, never behind history writes (a
    # stuck history writer held another user's group join for 20 s, rule 9).
    if requested_group is None:
        outcome = await join(None)
    else:
        outcome = await join(await host.in_lookup_thread(host.role_in_group)(caller.user_id, requested_group))
    if outcome.status is JoinStatus.FORBIDDEN:
        raise SignalingError(ErrorCode.FORBIDDEN, FORBIDDEN_GROUP)
    if outcome.status is JoinStatus.BANNED:
        until = iso_utc((outcome.banned_until_ms or 0) / 1000)
        raise SignalingError(ErrorCode.FORBIDDEN, BANNED, details={"bannedUntil": until})
    if outcome.status is JoinStatus.LOCKED:
        raise SignalingError(ErrorCode.ROOM_LOCKED, ROOM_LOCKED)
    if outcome.status is JoinStatus.FULL:
        raise SignalingError(
            ErrorCode.ROOM_FULL, ROOM_FULL, details={"maxParticipants": settings.CALLS_MAX_PARTICIPANTS}
        )
    assert outcome.session is not None
    me = next(m.participant for m in outcome.members if m.participant.socket_id == caller.socket_id)
    others = outcome.others(caller.socket_id)

    if outcome.status is not JoinStatus.ALREADY_IN_ROOM:
        caller.enter(outcome.session)
        previous_counts = caller.counts.reset()
        persist(
            history.record_join,
            session=outcome.session,
            participant=me,
            member_count=len(outcome.members),
            previous=outcome.previous,
            previous_counts=previous_counts,
        )
        if outcome.previous is not None:
            await announce_departure(outcome.previous, LeaveReason.SWITCHED_ROOM)
        announcement = Outgoing(
            Event.PARTICIPANT_JOINED, ParticipantJoined(callRoomId=request.callRoomId, participant=participant_data(me))
        )
        await delivery.deliver([m.channel_name for m in others], announcement)
        # Joining the room answers the user's ring for it (docs/protocol.md §9).
        await ringing.ended(
            await process.current().presence.end_rings(
                outcome=RingOutcome.ACCEPTED, room_key=outcome.session.key, user_id=caller.user_id
            )
        )
        logger.info(
            "join room=%s %s count=%d created=%s",
            request.callRoomId,
            caller.log_context(),
            len(outcome.members),
            outcome.status is JoinStatus.CREATED,
        )

    return RoomJoined(
        callRoomId=request.callRoomId,
        participantCount=len(outcome.members),
        existingParticipants=[participant_data(m.participant) for m in others],
        participant=participant_data(me),
        metadata=outcome.session.metadata,
        iceServers=ice_servers_for(user_id=caller.user_id),
        locked=outcome.locked,
    )


async def room_leave(caller: Caller, request: LeaveRoom) -> RoomLeft:
    """Rule 3: leave on request; the last one out ends the session."""
    departure = await process.current().presence.leave(
        room_key=caller.named_room(request.callRoomId), socket_id=caller.socket_id
    )
    if departure is None:
        raise SignalingError(ErrorCode.NOT_IN_ROOM, NOT_IN_ROOM)
    await depart(caller, departure, LeaveReason.LEFT)
    return RoomLeft(callRoomId=request.callRoomId)


async def media_state(caller: Caller, request: MediaState) -> None:
    """Rule 11: the sender's media, told to the others as the whole participant."""
    updated = await process.current().presence.update_media(
        room_key=caller.named_room(request.callRoomId),
        socket_id=caller.socket_id,
        audio=request.audio,
        video=request.video,
        screen=request.screen,
    )
    if updated is None:
        raise SignalingError(ErrorCode.NOT_IN_ROOM, NOT_IN_ROOM)
    participant, members = updated
    notice = ParticipantUpdated(callRoomId=request.callRoomId, participant=participant_data(participant))
    others = [m.channel_name for m in members if m.participant.socket_id != caller.socket_id]
    await delivery.deliver(others, Outgoing(Event.PARTICIPANT_UPDATED, notice))
    if caller.session_id is not None:
        persist(history.record_media_change, session_id=caller.session_id, socket_id=caller.socket_id)
    metrics.MEDIA_CHANGES.inc()


async def leave_current_room(caller: Caller, reason: LeaveReason) -> None:
    presence = process.current().presence
    key = await presence.room_of(socket_id=caller.socket_id)
    if key is None:
        return
    departure = await presence.leave(room_key=key, socket_id=caller.socket_id)
    if departure is not None:
        await depart(caller, departure, reason)


async def depart(caller: Caller, departure: Departure, reason: LeaveReason) -> None:
    caller.exit()
    persist(history.record_leave, departure=departure, reason=reason, counts=caller.counts.reset())
    await announce_departure(departure, reason)
    logger.info(
        "%s room=%s %s remaining=%d",
        "leave" if reason is LeaveReason.LEFT else reason.value,
        departure.session.room_id,
        caller.log_context(),
        len(departure.remaining),
    )


async def announce_departure(departure: Departure, reason: LeaveReason) -> None:
    announcement = Outgoing(
        Event.PARTICIPANT_LEFT,
        ParticipantLeft(
            callRoomId=departure.session.room_id, participant=participant_data(departure.participant), reason=reason
        ),
    )
    await delivery.deliver([m.channel_name for m in departure.remaining], announcement)
    if departure.room_emptied:  # the call is over: its rings end (docs/protocol.md §9)
        presence = process.current().presence
        await ringing.ended(await presence.end_rings(outcome=RingOutcome.CALL_ENDED, room_key=departure.session.key))


async def _charge_join(caller: Caller) -> None:
    """Rule 1's ``CALLS_JOINS_PER_MINUTE`` per user, on all processes, and rule 9: a join
    writes history, so the user who joins pays for it, and nobody joins while the
    process's history queue is full (leaves are still recorded: each follows a join)."""
    if process.current().writer.full():
        raise SignalingError(ErrorCode.RATE_LIMITED, HISTORY_BUSY)
    try:
        verdict = await process.current().join_windows.ahit(caller.user_id, settings.CALLS_JOINS_PER_MINUTE)
    except Exception as exc:  # the store is unreachable: presence will say so too
        logger.warning("join rate store unavailable: %s", exc)
        return
    if not verdict.allowed:
        retry_after = max(1, math.ceil(verdict.retry_after))
        raise SignalingError(ErrorCode.RATE_LIMITED, JOINS_RATE_LIMITED, details={"retryAfter": retry_after})


def persist(write: Any, **kwargs: Any) -> None:
    """Queue a call-history write; the process's writer applies it off the event loop."""
    process.current().writer.submit(write, **kwargs)
