"""Tests that the signaling services apply docs/protocol.md §5 without any websocket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest

from accounts.models import User
from calls import services
from calls.delivery import Mailbox
from calls.history import RelayCounts
from calls.presence import get_presence
from calls.protocol import (
    NATIVE,
    ErrorCode,
    Event,
    LeaveReason,
    Outgoing,
    Request,
    RoomLeft,
    SignalingError,
    parse_frame,
)
from groups.models import Group
from tests.conftest import RECEIVE_TIMEOUT_SECS, SILENCE_SECS

uses_database = pytest.mark.django_db(transaction=True)


# ---------------------------------------------------------------------------
# Helpers: callers on bare channels, requests parsed as a transport parses them
# ---------------------------------------------------------------------------


_mailboxes: dict[str, Mailbox] = {}


async def caller_for(user: User) -> services.Caller:
    """A connection of ``user`` whose frames land in a mailbox the test reads."""
    mailbox = Mailbox()
    opened = await services.connection_opened(
        mailbox, user_id=str(user.pk), username=user.username, display_name=user.shown_name
    )
    assert opened is not None
    caller, _ = opened
    _mailboxes[caller.socket_id] = mailbox
    return caller


async def next_item(mailbox: Mailbox) -> Outgoing | int | None:
    await mailbox.wait()
    return mailbox.take()


def request(event: Event, **data: Any) -> Request:
    return parse_frame(json.dumps({"event": event.value, "data": data})).request


async def delivered(caller: services.Caller) -> dict[str, Any]:
    """The next frame the services addressed to ``caller``."""
    event = await asyncio.wait_for(next_item(_mailboxes[caller.socket_id]), RECEIVE_TIMEOUT_SECS)
    assert isinstance(event, Outgoing)
    return json.loads(event.text(NATIVE))


async def nothing_delivered(*callers: services.Caller) -> None:
    async def _watch(caller: services.Caller) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(next_item(_mailboxes[caller.socket_id]), SILENCE_SECS)

    await asyncio.gather(*(_watch(caller) for caller in callers))


async def joined(room: str, *callers: services.Caller, **fields: Any) -> None:
    """Put ``callers`` in ``room`` in order, consuming the announcements."""
    for index, caller in enumerate(callers):
        await services.room_join(caller, request(Event.JOIN_ROOM, callRoomId=room, **fields))
        for earlier in callers[:index]:
            assert (await delivered(earlier))["event"] == Event.PARTICIPANT_JOINED


def refusal(excinfo: pytest.ExceptionInfo[SignalingError]) -> tuple[ErrorCode, str]:
    return excinfo.value.code, excinfo.value.message


# ---------------------------------------------------------------------------
# services: rooms
# ---------------------------------------------------------------------------


@uses_database
async def test_room_join_creates_a_room_and_announces_later_joiners_to_the_others(alice: User, bob: User) -> None:
    first, second = await caller_for(alice), await caller_for(bob)

    created = msgspec.to_builtins(await services.room_join(first, request(Event.JOIN_ROOM, callRoomId="r")))
    data = msgspec.to_builtins(await services.room_join(second, request(Event.JOIN_ROOM, callRoomId="r")))

    assert created["participantCount"] == 1
    assert data["participantCount"] == 2
    assert [p["socketId"] for p in data["existingParticipants"]] == [first.socket_id]
    assert await delivered(first) == {
        "event": Event.PARTICIPANT_JOINED,
        "data": {"callRoomId": "r", "participant": data["participant"]},
    }
    await nothing_delivered(first, second)


@uses_database
async def test_room_join_refuses_a_non_member_of_the_rooms_group(alice: User, dave: User, team: Group) -> None:
    member, outsider = await caller_for(alice), await caller_for(dave)
    await joined("team-call", member, metadata={"groupId": team.pk})

    with pytest.raises(SignalingError) as excinfo:
        await services.room_join(
            outsider, request(Event.JOIN_ROOM, callRoomId="team-call", metadata={"groupId": team.pk})
        )

    assert refusal(excinfo) == (ErrorCode.FORBIDDEN, services.FORBIDDEN_GROUP)
    members = await get_presence().members(room_key=f"team-call@{team.pk}")
    assert [m.participant.socket_id for m in members] == [member.socket_id]
    await nothing_delivered(member, outsider)


@uses_database
async def test_room_join_refuses_a_full_room(settings: Any, alice: User, bob: User) -> None:
    settings.CALLS_MAX_PARTICIPANTS = 1
    first, second = await caller_for(alice), await caller_for(bob)
    await joined("r", first)

    with pytest.raises(SignalingError) as excinfo:
        await services.room_join(second, request(Event.JOIN_ROOM, callRoomId="r"))

    assert refusal(excinfo) == (ErrorCode.ROOM_FULL, services.ROOM_FULL)
    assert await get_presence().room_of(socket_id=second.socket_id) is None


@uses_database
async def test_room_join_of_another_room_tells_the_old_one_of_the_switch(alice: User, bob: User) -> None:
    mover, stayer = await caller_for(alice), await caller_for(bob)
    await joined("first", mover, stayer)

    await services.room_join(mover, request(Event.JOIN_ROOM, callRoomId="second"))

    frame = await delivered(stayer)
    assert frame["event"] == Event.PARTICIPANT_LEFT
    assert frame["data"]["reason"] == LeaveReason.SWITCHED_ROOM
    assert await get_presence().room_of(socket_id=mover.socket_id) == "second"


@uses_database
async def test_room_leave_answers_the_room_and_tells_the_others(alice: User, bob: User) -> None:
    leaver, stayer = await caller_for(alice), await caller_for(bob)
    await joined("r", leaver, stayer)

    assert await services.room_leave(leaver, request(Event.LEAVE_ROOM, callRoomId="r")) == RoomLeft(callRoomId="r")

    frame = await delivered(stayer)
    assert (frame["event"], frame["data"]["reason"]) == (Event.PARTICIPANT_LEFT, LeaveReason.LEFT)
    assert frame["data"]["participant"]["socketId"] == leaver.socket_id


@uses_database
async def test_room_leave_of_a_room_you_are_not_in_is_not_in_room(alice: User, bob: User) -> None:
    leaver, occupant = await caller_for(alice), await caller_for(bob)
    await joined("r", occupant)

    with pytest.raises(SignalingError) as excinfo:
        await services.room_leave(leaver, request(Event.LEAVE_ROOM, callRoomId="r"))

    assert refusal(excinfo) == (ErrorCode.NOT_IN_ROOM, services.NOT_IN_ROOM)
    await nothing_delivered(occupant)


@uses_database
async def test_connection_closed_leaves_the_room_as_disconnected(alice: User, bob: User) -> None:
    closer, stayer = await caller_for(alice), await caller_for(bob)
    await joined("r", closer, stayer)

    await services.connection_closed(closer)

    frame = await delivered(stayer)
    assert (frame["event"], frame["data"]["reason"]) == (Event.PARTICIPANT_LEFT, LeaveReason.DISCONNECTED)
    assert await get_presence().room_of(socket_id=closer.socket_id) is None


@uses_database
async def test_connection_closed_outside_any_room_does_nothing(alice: User) -> None:
    caller = await caller_for(alice)

    await services.connection_closed(caller)

    await nothing_delivered(caller)


# ---------------------------------------------------------------------------
# services: relay
# ---------------------------------------------------------------------------


@uses_database
async def test_relay_delivers_an_offer_to_its_target_only(alice: User, bob: User, carol: User) -> None:
    sender, target, bystander = await caller_for(alice), await caller_for(bob), await caller_for(carol)
    await joined("r", sender, target, bystander)
    offer = {"type": "offer", "sdp": "v=0\r\n"}

    await services.relay(sender, request(Event.OFFER, callRoomId="r", targetSocketId=target.socket_id, offer=offer))

    assert await delivered(target) == {
        "event": Event.OFFER,
        "data": {"callRoomId": "r", "fromSocketId": sender.socket_id, "fromUserId": sender.user_id, "offer": offer},
    }
    await nothing_delivered(sender, bystander)


@uses_database
async def test_relay_broadcasts_a_candidate_without_a_target(alice: User, bob: User, carol: User) -> None:
    sender, *others = await caller_for(alice), await caller_for(bob), await caller_for(carol)
    await joined("r", sender, *others)

    await services.relay(sender, request(Event.ICE_CANDIDATE, callRoomId="r", candidate=""))

    for other in others:
        assert (await delivered(other))["data"]["candidate"] == ""
    await nothing_delivered(sender)


@pytest.mark.parametrize(
    ("situation", "code", "message"),
    [
        ("no live room", ErrorCode.ROOM_NOT_FOUND, services.ROOM_NOT_FOUND),
        ("sender outside", ErrorCode.NOT_IN_ROOM, services.NOT_IN_ROOM),
        ("target outside", ErrorCode.PARTICIPANT_NOT_FOUND, services.PARTICIPANT_NOT_FOUND),
    ],
)
@uses_database
async def test_relay_refuses_an_offer_that_cannot_be_routed(
    alice: User, bob: User, situation: str, code: ErrorCode, message: str
) -> None:
    sender, other = await caller_for(alice), await caller_for(bob)
    if situation == "sender outside":
        await joined("r", other)
    elif situation == "target outside":
        await joined("r", sender)
    offer = request(Event.OFFER, callRoomId="r", targetSocketId=other.socket_id, offer={"type": "offer", "sdp": ""})

    with pytest.raises(SignalingError) as excinfo:
        await services.relay(sender, offer)

    assert refusal(excinfo) == (code, message)
    await nothing_delivered(sender, other)


@uses_database
async def test_relay_drops_a_candidate_for_a_target_outside_the_room(alice: User, bob: User) -> None:
    sender, stranger = await caller_for(alice), await caller_for(bob)
    await joined("r", sender)

    await services.relay(
        sender, request(Event.ICE_CANDIDATE, callRoomId="r", targetSocketId=stranger.socket_id, candidate="")
    )

    await nothing_delivered(sender, stranger)
    assert sender.counts == RelayCounts()


@uses_database
async def test_relay_counts_what_the_sender_relayed(alice: User, bob: User) -> None:
    sender, target = await caller_for(alice), await caller_for(bob)
    await joined("r", sender, target)
    description = {"type": "offer", "sdp": ""}

    await services.relay(
        sender, request(Event.OFFER, callRoomId="r", targetSocketId=target.socket_id, offer=description)
    )
    for _ in range(2):
        await services.relay(sender, request(Event.ICE_CANDIDATE, callRoomId="r", candidate=""))

    assert sender.counts == RelayCounts(offers=1, answers=0, candidates=2)


@uses_database
async def test_handle_request_replies_with_the_request_id_and_tags_errors(alice: User) -> None:
    caller = await caller_for(alice)
    join = parse_frame(json.dumps({"event": "webrtc:join-room", "data": {"callRoomId": "r"}, "id": 7}))
    leave = parse_frame(json.dumps({"event": "webrtc:leave-room", "data": {"callRoomId": "x"}, "id": "c-8"}))

    reply = await services.handle_request(caller, join)
    with pytest.raises(SignalingError) as excinfo:
        await services.handle_request(caller, leave)

    assert reply is not None and json.loads(reply.text(NATIVE))["id"] == 7
    assert (excinfo.value.code, excinfo.value.event, excinfo.value.request_id) == (
        ErrorCode.NOT_IN_ROOM,
        "webrtc:leave-room",
        "c-8",
    )
