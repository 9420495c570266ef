"""The signaling rules of docs/protocol.md §5 as plain async functions, by what they
serve: ``connections``, ``rooms`` and ``relay``.

No transport code: a transport parses a frame into a ``protocol.ParsedRequest``, calls
``handle_request`` with the ``Caller`` it holds for the connection, and frames the
``Outgoing`` event it gets back. Everything addressed to other participants goes to each
recipient's own address through ``calls.delivery``: SDP and candidates reveal network
addresses and must reach only their target, never a group that filters.
"""

from __future__ import annotations

import logging

from calls import metrics
from calls.presence.base import PresenceUnavailable
from calls.protocol import (
    Ack,
    Answer,
    EndCall,
    ErrorCode,
    Event,
    IceCandidate,
    JoinRoom,
    Kick,
    LeaveRoom,
    LockRoom,
    MediaState,
    Offer,
    Outgoing,
    ParsedRequest,
    RefreshAuth,
    Ring,
    RingCancel,
    RingReply,
    SignalingError,
)
from calls.services import moderation, ringing
from calls.services.caller import Caller, new_socket_id, participant_data
from calls.services.connections import (
    REFRESH_REFUSED,
    connected_event,
    connection_closed,
    connection_opened,
    flush_relay_counts,
    open_connections,
    participant_lost,
    refresh_auth,
    remove_from_group_room,
    shut_down_connections,
)
from calls.services.relay import PARTICIPANT_NOT_FOUND, RECIPIENT_BUSY, ROOM_NOT_FOUND, relay
from calls.services.rooms import (
    FORBIDDEN_GROUP,
    HISTORY_BUSY,
    JOINS_RATE_LIMITED,
    NOT_IN_ROOM,
    ROOM_FULL,
    media_state,
    room_join,
    room_leave,
)

__all__ = [
    "FORBIDDEN_GROUP",
    "HISTORY_BUSY",
    "JOINS_RATE_LIMITED",
    "NOT_IN_ROOM",
    "PARTICIPANT_NOT_FOUND",
    "RECIPIENT_BUSY",
    "REFRESH_REFUSED",
    "ROOM_FULL",
    "ROOM_NOT_FOUND",
    "UNAVAILABLE",
    "Caller",
    "connected_event",
    "connection_closed",
    "connection_opened",
    "flush_relay_counts",
    "handle_request",
    "new_socket_id",
    "open_connections",
    "participant_data",
    "participant_lost",
    "relay",
    "remove_from_group_room",
    "room_join",
    "room_leave",
    "shut_down_connections",
]

logger = logging.getLogger("calls")

UNAVAILABLE = "Signaling is unavailable for a moment; try again."


async def handle_request(caller: Caller, parsed: ParsedRequest) -> Outgoing | None:
    """Apply one validated request; return the reply, if it has one."""
    request = parsed.request
    try:
        if isinstance(request, Offer | Answer | IceCandidate):
            await relay(caller, request)
            return _ack(parsed)
        if isinstance(request, RefreshAuth):
            await refresh_auth(caller, request)
            return _ack(parsed)
        if isinstance(request, JoinRoom):
            with metrics.JOIN_SECONDS.time():
                return Outgoing(Event.ROOM_JOINED, await room_join(caller, request), parsed.request_id)
        if isinstance(request, LeaveRoom):
            return Outgoing(Event.ROOM_LEFT, await room_leave(caller, request), parsed.request_id)
        if isinstance(request, Ring):
            return Outgoing(Event.RING_STARTED, await ringing.ring(caller, request), parsed.request_id)
        if isinstance(request, MediaState):
            await media_state(caller, request)
        elif isinstance(request, RingReply):
            await ringing.reply(caller, request)
        elif isinstance(request, RingCancel):
            await ringing.cancel(caller, request)
        elif isinstance(request, Kick):
            await moderation.kick(caller, request)
        elif isinstance(request, EndCall):
            await moderation.end_call(caller, request)
        elif isinstance(request, LockRoom):
            await moderation.lock(caller, request)
        else:
            raise AssertionError(f"no rule for {type(request).__name__}")
        return _ack(parsed)
    except PresenceUnavailable as exc:
        logger.warning("presence unavailable: %s", exc)
        raise SignalingError(
            ErrorCode.INTERNAL_ERROR,
            UNAVAILABLE,
            event=parsed.event.value,
            request_id=parsed.request_id,
            room_id=getattr(request, "callRoomId", None),
        ) from None
    except SignalingError as error:
        error.event, error.request_id = parsed.event.value, parsed.request_id
        error.room_id = getattr(request, "callRoomId", None)
        raise


def _ack(parsed: ParsedRequest) -> Outgoing | None:
    """``webrtc:ack``, for a request that carried an ``id`` and has no reply of its own:
    every request with an ``id`` gets exactly one reply (docs/protocol.md §1)."""
    if parsed.request_id is None:
        return None
    return Outgoing(Event.ACK, Ack(event=parsed.event.value), parsed.request_id)
