"""Relay: offer, answer and ICE candidate to their target, or a candidate to everyone
else (docs/protocol.md §5 rule 5). No SQL on this path."""

from __future__ import annotations

import logging

from calls import delivery, metrics, process
from calls.presence.base import Forward, RouteStatus
from calls.protocol import (
    Answer,
    ErrorCode,
    Event,
    IceCandidate,
    Offer,
    Outgoing,
    RelayedAnswer,
    RelayedIceCandidate,
    RelayedOffer,
    SignalingError,
)
from calls.services.caller import Caller
from calls.services.rooms import NOT_IN_ROOM

logger = logging.getLogger("calls")

ROOM_NOT_FOUND = "There is no call with that id."


PARTICIPANT_NOT_FOUND = "That participant is not in this call."


RECIPIENT_BUSY = "The recipient is not keeping up; try again."


_RELAYED = {event: metrics.RELAYED.labels(event.value) for event in (Event.OFFER, Event.ANSWER, Event.ICE_CANDIDATE)}


async def relay(caller: Caller, request: Offer | Answer | IceCandidate) -> None:
    target = request.targetSocketId
    event, data = _relayed(caller, request)
    relayed = Outgoing(event, data)
    local = process.current().connections.get(target) if target is not None else None
    if local is not None and caller.room_id == request.callRoomId and local.room_key == caller.room_key:
        # Both ends are connections of this process, which applies every join and leave
        # of its own connections, so it knows their rooms exactly: no need to ask
        # presence (with Redis, a round trip; docs/benchmarks.md has the figures).
        undelivered = 0 if delivery.deliver_here(local.socket_id, relayed) else 1
    else:
        # With Redis, presence publishes to other processes as it routes.
        routed = await _route(caller, request, delivery.forward(relayed))
        if routed is None:
            return
        undelivered = await delivery.deliver(routed, relayed)
    if undelivered and target is not None:
        raise SignalingError(ErrorCode.INTERNAL_ERROR, RECIPIENT_BUSY)
    caller.counts.add(event)
    _RELAYED[event].inc()
    logger.debug("relay %s room=%s from=%s to=%s", event.value, request.callRoomId, caller.socket_id, target or "*")


async def _route(
    caller: Caller, request: Offer | Answer | IceCandidate, forward: Forward | None
) -> tuple[str, ...] | None:
    """Where presence says the frame goes (what it has not forwarded itself): raises
    the rule's error, or ``None`` for a candidate to be dropped."""
    target = request.targetSocketId
    route = await process.current().presence.route(
        room_key=caller.named_room(request.callRoomId), sender=caller.socket_id, target=target, forward=forward
    )
    if route.status is RouteStatus.NO_ROOM:
        raise SignalingError(ErrorCode.ROOM_NOT_FOUND, ROOM_NOT_FOUND)
    if route.status is RouteStatus.SENDER_NOT_IN_ROOM:
        raise SignalingError(ErrorCode.NOT_IN_ROOM, NOT_IN_ROOM)
    if route.status is RouteStatus.TARGET_NOT_IN_ROOM:
        if isinstance(request, IceCandidate):
            # The target has just left; its candidates are of no use to anyone.
            logger.debug("candidate dropped room=%s to=%s", request.callRoomId, target)
            return None
        raise SignalingError(ErrorCode.PARTICIPANT_NOT_FOUND, PARTICIPANT_NOT_FOUND)
    return route.channels


def _relayed(
    caller: Caller, request: Offer | Answer | IceCandidate
) -> tuple[Event, RelayedOffer | RelayedAnswer | RelayedIceCandidate]:
    """What the recipient gets: rebuilt from declared fields only, with the sender's
    real identity (never the client's word for it)."""
    if isinstance(request, Offer):
        return Event.OFFER, RelayedOffer(
            callRoomId=request.callRoomId,
            fromSocketId=caller.socket_id,
            fromUserId=caller.user_id,
            offer=request.offer,
            sdpMid=request.sdpMid,
            sdpMLineIndex=request.sdpMLineIndex,
        )
    if isinstance(request, Answer):
        return Event.ANSWER, RelayedAnswer(
            callRoomId=request.callRoomId,
            fromSocketId=caller.socket_id,
            fromUserId=caller.user_id,
            answer=request.answer,
        )
    return Event.ICE_CANDIDATE, RelayedIceCandidate(
        callRoomId=request.callRoomId,
        fromSocketId=caller.socket_id,
        fromUserId=caller.user_id,
        candidate=request.candidate,
        sdpMid=request.sdpMid,
        sdpMLineIndex=request.sdpMLineIndex,
    )
