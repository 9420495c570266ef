"""Tests that the signaling services and the in-memory presence apply PROTOCOL.md §5 without any websocket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from channels.layers import get_channel_layer

from accounts.models import User
from calls import services
from calls.history import RelayCounts
from calls.presence import get_presence
from calls.presence.base import JoinStatus, Member, Participant, RoomSession, RouteStatus
from calls.presence.memory import InMemoryPresence
from calls.protocol import ErrorCode, Event, LeaveReason, Request, SignalingError, parse_frame
from groups.models import Group
from tests.conftest import RECEIVE_TIMEOUT_SECS, SILENCE_SECS

uses_database = pytest.mark.django_db(transaction=True)


# ---------------------------------------------------------------------------
# Helpers: callers on bare channels, requests parsed as a transport parses them
# ---------------------------------------------------------------------------


async def caller_for(user: User) -> services.Caller:
    """A connection of ``user`` whose frames land on a fresh channel of the layer."""
    return services.Caller(
        socket_id=services.new_socket_id(),
        channel_name=await get_channel_layer().new_channel(),
        user_id=str(user.pk),
        username=user.username,
        display_name=user.shown_name,
    )


def request(event: Event, **data: Any) -> Request:
    return parse_frame(json.dumps({"event": event.value, "data": data})).request


async def delivered(caller: services.Caller) -> dict[str, Any]:
    """The next frame the services addressed to ``caller``."""
    message = await asyncio.wait_for(get_channel_layer().receive(caller.channel_name), RECEIVE_TIMEOUT_SECS)
    assert message["type"] == services.DELIVER_TYPE
    return json.loads(message["text"])


async def nothing_delivered(*callers: services.Caller) -> None:
    async def _watch(caller: services.Caller) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(get_channel_layer().receive(caller.channel_name), SILENCE_SECS)

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

    created = await services.room_join(first, request(Event.JOIN_ROOM, callRoomId="r"))
    data = await services.room_join(second, request(Event.JOIN_ROOM, callRoomId="r"))

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
        await services.room_join(outsider, request(Event.JOIN_ROOM, callRoomId="team-call"))

    assert refusal(excinfo) == (ErrorCode.FORBIDDEN, services.FORBIDDEN_GROUP)
    assert [m.participant.socket_id for m in await get_presence().members(room_id="team-call")] == [member.socket_id]
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

    assert await services.room_leave(leaver, request(Event.LEAVE_ROOM, callRoomId="r")) == {"callRoomId": "r"}

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

    assert json.loads(reply or "")["id"] == 7
    assert (excinfo.value.code, excinfo.value.event, excinfo.value.request_id) == (
        ErrorCode.NOT_IN_ROOM,
        "webrtc:leave-room",
        "c-8",
    )


# ---------------------------------------------------------------------------
# InMemoryPresence
# ---------------------------------------------------------------------------


def member(socket_id: str) -> Member:
    participant = Participant(socket_id, f"user-{socket_id}", socket_id, socket_id.title(), "2026-01-01T00:00:00.000Z")
    return Member(participant, f"channel-{socket_id}")


def session(room_id: str = "r", *, group_id: str | None = None, session_id: str = "s1") -> RoomSession:
    return RoomSession(room_id, session_id, {"callType": "video"}, group_id)


async def put(presence: InMemoryPresence, room_id: str, *socket_ids: str, capacity: int = 16) -> None:
    for socket_id in socket_ids:
        outcome = await presence.join(
            new_session=session(room_id), member=member(socket_id), capacity=capacity, group_ids=frozenset()
        )
        assert outcome.status in {JoinStatus.CREATED, JoinStatus.JOINED}


def socket_ids_of(members: tuple[Member, ...]) -> list[str]:
    return [m.participant.socket_id for m in members]


async def test_presence_creates_a_room_on_the_first_join_and_keeps_its_session() -> None:
    presence = InMemoryPresence()

    created = await presence.join(
        new_session=session(session_id="s1"), member=member("a"), capacity=16, group_ids=frozenset()
    )
    later = await presence.join(
        new_session=session(session_id="s2"), member=member("b"), capacity=16, group_ids=frozenset()
    )

    assert (created.status, later.status) == (JoinStatus.CREATED, JoinStatus.JOINED)
    assert created.session == later.session == await presence.session(room_id="r")
    assert later.session is not None and later.session.session_id == "s1"


async def test_presence_keeps_members_in_join_order() -> None:
    presence = InMemoryPresence()

    await put(presence, "r", "a", "b", "c", "d")

    assert socket_ids_of(await presence.members(room_id="r")) == ["a", "b", "c", "d"]


async def test_presence_refuses_a_join_beyond_capacity_and_changes_nothing() -> None:
    presence = InMemoryPresence()
    await put(presence, "r", "a", "b")
    await put(presence, "elsewhere", "c")

    outcome = await presence.join(new_session=session(), member=member("c"), capacity=2, group_ids=frozenset())

    assert outcome.status is JoinStatus.FULL
    assert socket_ids_of(await presence.members(room_id="r")) == ["a", "b"]
    assert await presence.room_of(socket_id="c") == "elsewhere"


async def test_presence_admits_only_members_of_a_group_room() -> None:
    presence = InMemoryPresence()
    await presence.join(new_session=session(group_id="5"), member=member("a"), capacity=16, group_ids=frozenset({"5"}))

    refused = await presence.join(new_session=session(), member=member("b"), capacity=16, group_ids=frozenset({"6"}))
    admitted = await presence.join(
        new_session=session(), member=member("c"), capacity=16, group_ids=frozenset({"5", "6"})
    )

    assert (refused.status, admitted.status) == (JoinStatus.FORBIDDEN, JoinStatus.JOINED)
    assert socket_ids_of(await presence.members(room_id="r")) == ["a", "c"]


async def test_presence_answers_already_in_room_without_changing_it() -> None:
    presence = InMemoryPresence()
    await put(presence, "r", "a", "b")

    again = await presence.join(
        new_session=session(session_id="other"), member=member("a"), capacity=2, group_ids=frozenset()
    )

    assert again.status is JoinStatus.ALREADY_IN_ROOM
    assert socket_ids_of(again.members) == ["a", "b"]
    assert again.previous is None


async def test_presence_moves_a_member_between_rooms_and_returns_the_departure() -> None:
    presence = InMemoryPresence()
    await put(presence, "first", "a", "b")

    moved = await presence.join(new_session=session("second"), member=member("a"), capacity=16, group_ids=frozenset())

    assert moved.status is JoinStatus.CREATED
    assert moved.previous is not None
    assert moved.previous.session.room_id == "first"
    assert moved.previous.participant.socket_id == "a"
    assert socket_ids_of(moved.previous.remaining) == ["b"]
    assert await presence.room_of(socket_id="a") == "second"


async def test_presence_leave_returns_none_when_not_in_that_room() -> None:
    presence = InMemoryPresence()
    await put(presence, "r", "a")
    await put(presence, "other", "b")

    assert await presence.leave(room_id="r", socket_id="b") is None
    assert await presence.leave(room_id="nowhere", socket_id="a") is None
    assert await presence.leave(room_id="r", socket_id="stranger") is None
    assert socket_ids_of(await presence.members(room_id="r")) == ["a"]


async def test_presence_leave_by_the_last_member_ends_the_session() -> None:
    presence = InMemoryPresence()
    await put(presence, "r", "a", "b")

    first = await presence.leave(room_id="r", socket_id="a")
    last = await presence.leave(room_id="r", socket_id="b")

    assert first is not None and not first.room_emptied
    assert last is not None and last.room_emptied
    assert await presence.session(room_id="r") is None
    assert await presence.room_of(socket_id="b") is None


@pytest.mark.parametrize(
    ("room_id", "sender", "target", "status", "channels"),
    [
        ("nowhere", "a", "b", RouteStatus.NO_ROOM, ()),
        ("r", "stranger", "b", RouteStatus.SENDER_NOT_IN_ROOM, ()),
        ("r", "x", "b", RouteStatus.SENDER_NOT_IN_ROOM, ()),
        ("r", "a", "x", RouteStatus.TARGET_NOT_IN_ROOM, ()),
        ("r", "a", "b", RouteStatus.OK, ("channel-b",)),
        ("r", "a", None, RouteStatus.OK, ("channel-b", "channel-c")),
    ],
    ids=["no room", "sender in no room", "sender in another room", "target in another room", "target", "everyone else"],
)
async def test_presence_routes_only_within_a_room(
    room_id: str, sender: str, target: str | None, status: RouteStatus, channels: tuple[str, ...]
) -> None:
    presence = InMemoryPresence()
    await put(presence, "r", "a", "b", "c")
    await put(presence, "other", "x")

    route = await presence.route(room_id=room_id, sender=sender, target=target)

    assert (route.status, route.channels) == (status, channels)
