"""Moderation (docs/protocol.md §10): kick (with a ban), end the call for everyone, lock.

Moderators of a room are staff users; in a group's room the group's owners and admins;
in an ungrouped room the user who created its session. Each action is recorded in the
call history: who, when, to whom.
"""

from __future__ import annotations

import logging
import time

from django.contrib.auth import get_user_model
from msgspec import UNSET

from calls import delivery, history, host, metrics, process
from calls.presence.base import Member, Participant, RoomSession
from calls.protocol import (
    CallEnded,
    EndCall,
    ErrorCode,
    Event,
    Kick,
    Kicked,
    LeaveReason,
    LockRoom,
    Outgoing,
    RingOutcome,
    RoomUpdated,
    SignalingError,
    iso_utc,
)
from calls.services import ringing
from calls.services.caller import NOT_IN_ROOM, Caller, own_room, participant_data
from calls.services.rooms import announce_departure, persist

logger = logging.getLogger("calls")

NOT_MODERATOR = "Only the call's moderators may do that."
NOT_A_MODERATOR_TARGET = "Only staff may remove a moderator from a call."
NOT_YOURSELF = "You cannot kick yourself; leave the call instead."
TARGET_NOT_FOUND = "That participant is not in this call."


def _moderates(user_id: str, session: RoomSession) -> bool:
    """Whether a user moderates a room (a query: run on the lookup threads)."""
    if host.is_staff(get_user_model()._default_manager.filter(pk=user_id).first()):
        return True
    if session.group_id is None:
        return str(session.metadata.get("createdBy")) == user_id
    return host.role_in_group(user_id, session.group_id) in host.moderator_roles()


async def _as_moderator(caller: Caller, room_id: str) -> tuple[RoomSession, tuple[Member, ...], Participant]:
    """The caller's room, its members and the caller's participant, if the caller is in
    it and moderates it; else the error."""
    session, members, me = await own_room(caller, room_id)
    if not (caller.is_staff or await host.in_lookup_thread(_moderates)(caller.user_id, session)):
        raise SignalingError(ErrorCode.FORBIDDEN, NOT_MODERATOR)
    return session, members, me


def _record(session: RoomSession, caller: Caller, action: str, **target: object) -> None:
    persist(
        history.record_moderation,
        session_id=session.session_id,
        actor_user_id=caller.user_id,
        action=action,
        at=iso_utc(time.time()),
        **target,
    )
    metrics.MODERATION.labels(action).inc()


async def kick(caller: Caller, request: Kick) -> None:
    """The target leaves (``participant-left`` ``kicked`` to the others, ``kicked`` to
    it); with ``banSecs`` its user may not join the room again until then."""
    session, members, me = await _as_moderator(caller, request.callRoomId)
    if request.targetSocketId == caller.socket_id:
        raise SignalingError(ErrorCode.FORBIDDEN, NOT_YOURSELF)
    target = next((m for m in members if m.participant.socket_id == request.targetSocketId), None)
    if target is None:
        raise SignalingError(ErrorCode.PARTICIPANT_NOT_FOUND, TARGET_NOT_FOUND)
    if not caller.is_staff and await host.in_lookup_thread(_moderates)(target.participant.user_id, session):
        raise SignalingError(ErrorCode.FORBIDDEN, NOT_A_MODERATOR_TARGET)
    presence = process.current().presence
    banned_until = None
    if request.banSecs > 0:
        until_ms = int((time.time() + request.banSecs) * 1000)
        await presence.ban(room_key=session.key, user_id=target.participant.user_id, until_ms=until_ms)
        banned_until = iso_utc(until_ms / 1000)
    departure = await presence.leave(room_key=session.key, socket_id=request.targetSocketId)
    if departure is None:  # it left meanwhile
        raise SignalingError(ErrorCode.PARTICIPANT_NOT_FOUND, TARGET_NOT_FOUND)
    notice = Kicked(callRoomId=request.callRoomId, by=participant_data(me), bannedUntil=banned_until or UNSET)
    await delivery.deliver([target.channel_name], Outgoing(Event.KICKED, notice))
    persist(history.record_leave, departure=departure, reason=LeaveReason.KICKED, counts=history.RelayCounts())
    await announce_departure(departure, LeaveReason.KICKED)
    _record(
        session,
        caller,
        "ban" if banned_until else "kick",
        target_user_id=target.participant.user_id,
        target_socket_id=request.targetSocketId,
        banned_until=banned_until,
    )
    logger.info(
        "kick room=%s %s target=%s until=%s",
        request.callRoomId,
        caller.log_context(),
        request.targetSocketId,
        banned_until,
    )


async def end_call(caller: Caller, request: EndCall) -> None:
    """Everyone is out of the room at once (``call-ended``); its session and rings end."""
    session, _, me = await _as_moderator(caller, request.callRoomId)
    presence = process.current().presence
    ended = await presence.end_room(room_key=session.key)
    if ended is None:
        raise SignalingError(ErrorCode.NOT_IN_ROOM, NOT_IN_ROOM)
    _, members = ended
    notice = Outgoing(Event.CALL_ENDED, CallEnded(callRoomId=request.callRoomId, by=participant_data(me)))
    await delivery.deliver([m.channel_name for m in members], notice)
    at = iso_utc(time.time())
    persist(history.record_call_ended, session_id=session.session_id, ended_by_user_id=caller.user_id, at=at)
    await ringing.ended(await presence.end_rings(outcome=RingOutcome.CALL_ENDED, room_key=session.key))
    _record(session, caller, "end-call")
    logger.info("end call room=%s %s participants=%d", request.callRoomId, caller.log_context(), len(members))


async def lock(caller: Caller, request: LockRoom) -> None:
    """Lock or unlock the room; everyone in it gets ``room-updated``."""
    session, _, me = await _as_moderator(caller, request.callRoomId)
    members = await process.current().presence.set_locked(room_key=session.key, locked=request.locked)
    update = RoomUpdated(callRoomId=request.callRoomId, locked=request.locked, by=participant_data(me))
    await delivery.deliver([m.channel_name for m in members], Outgoing(Event.ROOM_UPDATED, update))
    _record(session, caller, "lock" if request.locked else "unlock")
