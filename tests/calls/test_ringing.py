"""Tests that ringing follows docs/protocol.md §9 as its "How this server does it" decides it:
who may ring whom, what the ringer, the callees' connections and the room are told, the
ways one callee's ring ends (each once), ``ring-not-found``, and the call history."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from accounts.models import User
from calls.models import CallRing, CallRoom
from calls.services import ringing
from groups.models import Group
from tests.calls.conftest import InRoom, all_silent
from tests.conftest import Client, ConnectFactory, history_written

pytestmark = pytest.mark.django_db(transaction=True)

ROOM = "team-call"
RING_STARTED_KEYS = {"ringId", "callRoomId", "userIds", "expiresAt"}
INCOMING_CALL_KEYS = {"ringId", "callRoomId", "groupId", "callType", "from", "expiresAt"}


def utc(value: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert moment.utcoffset() == dt.timedelta(0), value
    return moment


def of(team: Group) -> dict[str, Any]:
    return {"metadata": {"groupId": team.pk}}


async def ring(client: Client, room: str = ROOM, user_ids: list[str] | None = None, id: str = "r-1") -> dict[str, Any]:
    """Ring; the reply (with the request's id) must be the next frame: its data."""
    data: dict[str, Any] = {"callRoomId": room}
    if user_ids is not None:
        data["userIds"] = user_ids
    await client.send("webrtc:ring", data, id=id)
    frame = await client.expect("webrtc:ring-started")
    assert frame["id"] == id, frame
    assert frame["data"].keys() == RING_STARTED_KEYS, frame
    assert frame["data"]["callRoomId"] == room, frame
    return frame["data"]


async def incoming(client: Client, started: dict[str, Any]) -> dict[str, Any]:
    """The client's next frame is the incoming-call of the ring ``started``."""
    frame = await client.expect("webrtc:incoming-call")
    assert "id" not in frame, frame
    data = frame["data"]
    assert data.keys() == INCOMING_CALL_KEYS, frame
    assert (data["ringId"], data["callRoomId"], data["expiresAt"]) == (
        started["ringId"],
        started["callRoomId"],
        started["expiresAt"],
    ), frame
    return data


async def ring_ended(client: Client, ring_id: str, reason: str, room: str = ROOM) -> None:
    frame = await client.expect("webrtc:ring-ended")
    assert frame == {"event": "webrtc:ring-ended", "data": {"ringId": ring_id, "callRoomId": room, "reason": reason}}


async def ring_updated(client: Client, ring_id: str, user: User, status: str, room: str = ROOM) -> None:
    frame = await client.expect("webrtc:ring-updated")
    data = {"ringId": ring_id, "callRoomId": room, "userId": str(user.pk), "status": status}
    assert frame == {"event": "webrtc:ring-updated", "data": data}, frame


async def next_frames(client: Client, count: int) -> dict[str, dict[str, Any]]:
    """The client's next ``count`` frames, in any order, by event (each event once)."""
    frames: dict[str, dict[str, Any]] = {}
    for _ in range(count):
        frame = await client.receive()
        assert frame["event"] not in frames, f"{frame['event']} twice: {frames[frame['event']]} and {frame}"
        frames[frame["event"]] = frame
    return frames


async def acked_with_ring_ended(client: Client, event: str, id: str, ring_id: str, reason: str) -> None:
    """The client sent ``event`` with ``id``: its ack and its own ring-ended arrive, in either order."""
    frames = await next_frames(client, 2)
    assert frames.keys() == {"webrtc:ack", "webrtc:ring-ended"}, frames
    assert frames["webrtc:ack"] == {"event": "webrtc:ack", "data": {"event": event}, "id": id}
    assert frames["webrtc:ring-ended"]["data"] == {"ringId": ring_id, "callRoomId": ROOM, "reason": reason}


async def acked(client: Client, event: str, id: str) -> None:
    frame = await client.expect("webrtc:ack")
    assert frame == {"event": "webrtc:ack", "data": {"event": event}, "id": id}, frame


async def refused(client: Client, code: str, event: str, id: str) -> None:
    frame = await client.expect_error(code, event=event)
    assert frame["id"] == id, frame


async def reply(client: Client, ring_id: str, response: str, id: str | None = "y-1") -> None:
    await client.send("webrtc:ring-reply", {"ringId": ring_id, "response": response}, id=id)


async def cancel(client: Client, ring_id: str, id: str | None = "c-1") -> None:
    await client.send("webrtc:ring-cancel", {"ringId": ring_id}, id=id)


# ---------------------------------------------------------------------------
# Who may ring, and whom
# ---------------------------------------------------------------------------


async def test_ringing_outside_any_room_is_not_in_room(connect: ConnectFactory, alice: User, bob: User) -> None:
    client = await connect(alice)
    callee = await connect(bob)

    await client.send("webrtc:ring", {"callRoomId": ROOM}, id="r")

    await refused(client, "not-in-room", "webrtc:ring", "r")
    await callee.round_trip()


async def test_ringing_for_a_room_one_is_not_in_is_not_in_room(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group
) -> None:
    (a,) = await in_room("mine", alice, **of(team))
    (c,) = await in_room(ROOM, carol, **of(team))
    callee = await connect(bob)

    await a.send("webrtc:ring", {"callRoomId": ROOM}, id="r")

    await refused(a, "not-in-room", "webrtc:ring", "r")
    await all_silent(callee, c)


async def test_ringing_from_a_room_without_a_group_is_forbidden(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, team: Group
) -> None:
    (a,) = await in_room(ROOM, alice)  # the same id, but no group: another room
    callee = await connect(bob)

    for id, data in (("all", {"callRoomId": ROOM}), ("some", {"callRoomId": ROOM, "userIds": [str(bob.pk)]})):
        await a.send("webrtc:ring", data, id=id)
        await refused(a, "forbidden", "webrtc:ring", id)
    await callee.round_trip()


@pytest.mark.parametrize("who", ["outsider", "unknown user", "member and outsider"])
async def test_ringing_a_user_outside_the_group_is_forbidden_and_rings_nobody(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, dave: User, team: Group, who: str
) -> None:
    (a,) = await in_room(ROOM, alice, **of(team))
    callee, outsider = await connect(bob), await connect(dave)
    user_ids = {
        "outsider": [str(dave.pk)],
        "unknown user": [str(dave.pk + 1000)],
        "member and outsider": [str(bob.pk), str(dave.pk)],
    }[who]

    await a.send("webrtc:ring", {"callRoomId": ROOM, "userIds": user_ids}, id="r")

    await refused(a, "forbidden", "webrtc:ring", "r")
    await all_silent(callee, outsider)
    # Nothing was rung: bob may be rung now, by a new ring.
    started = await ring(a, user_ids=[str(bob.pk)], id="r-2")
    assert started["userIds"] == [str(bob.pk)]
    await incoming(callee, started)


async def test_a_malformed_ring_is_invalid(in_room: InRoom, alice: User, team: Group) -> None:
    (a,) = await in_room(ROOM, alice, **of(team))
    for id, data in (
        ("empty", {"callRoomId": ROOM, "userIds": []}),
        ("numbers", {"callRoomId": ROOM, "userIds": [1]}),
        ("no-room", {}),
    ):
        await a.send("webrtc:ring", data, id=id)
        await refused(a, "invalid-message", "webrtc:ring", id)
    for event, data in (
        ("webrtc:ring-reply", {"ringId": "x", "response": "maybe"}),
        ("webrtc:ring-reply", {"response": "accept"}),
        ("webrtc:ring-cancel", {}),
    ):
        await a.send(event, data, id="bad")
        await refused(a, "invalid-message", event, "bad")


# ---------------------------------------------------------------------------
# Starting a ring
# ---------------------------------------------------------------------------


async def test_a_ring_rings_every_member_not_in_the_room_on_every_connection(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, dave: User, team: Group
) -> None:
    """Tests ring-started (the users actually rung, expiresAt = now + the timeout) and the
    incoming-call on each of bob's connections, with ``from`` the ringer's participant;
    carol, in the room, and alice herself are not rung on any connection."""
    a, c = await in_room(ROOM, alice, carol, callType="audio", **of(team))
    ringer = (await a.join(ROOM, **of(team)))["participant"]
    bob_phone, bob_laptop = await connect(bob), await connect(bob)
    alice_elsewhere, carol_elsewhere, outsider = await connect(alice), await connect(carol), await connect(dave)
    before = dt.datetime.now(dt.UTC)

    started = await ring(a)

    after = dt.datetime.now(dt.UTC)
    assert started["userIds"] == [str(bob.pk)]
    assert started["ringId"]
    timeout = dt.timedelta(seconds=settings.CALLS_RING_TIMEOUT_SECS)
    assert before + timeout - dt.timedelta(seconds=1) <= utc(started["expiresAt"]) <= after + timeout
    for connection in (bob_phone, bob_laptop):
        call = await incoming(connection, started)
        assert call["groupId"] == str(team.pk)
        assert call["callType"] == "audio"
        assert call["from"] == ringer
    await all_silent(a, c, alice_elsewhere, carol_elsewhere, outsider, bob_phone, bob_laptop)
    assert await ringing.expire_rings() == 0  # not before its time


async def test_the_callers_own_user_and_users_in_the_room_are_never_rung(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group
) -> None:
    a, c = await in_room(ROOM, alice, carol, **of(team))
    bob_phone, alice_elsewhere, carol_elsewhere = await connect(bob), await connect(alice), await connect(carol)

    started = await ring(a, user_ids=[str(alice.pk), str(carol.pk), str(bob.pk), str(bob.pk)])

    assert started["userIds"] == [str(bob.pk)]
    call = await incoming(bob_phone, started)
    assert call["callType"] == "video"
    await all_silent(c, alice_elsewhere, carol_elsewhere, bob_phone)

    only_present = await ring(a, user_ids=[str(alice.pk), str(carol.pk)], id="r-2")
    assert only_present["userIds"] == []
    await all_silent(c, alice_elsewhere, carol_elsewhere, bob_phone)


async def test_a_user_already_rung_for_the_room_keeps_its_ring(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group
) -> None:
    """Tests that a second ring, by anyone in the room, leaves bob's ring as it is (not
    in userIds, no second incoming-call), still answerable with its ringId; and that once
    it has ended, bob can be rung again."""
    a, c = await in_room(ROOM, alice, carol, **of(team))
    callee = await connect(bob)
    first = await ring(a, user_ids=[str(bob.pk)])
    await incoming(callee, first)

    again = await ring(c, id="r-2")
    same_ringer = await ring(a, user_ids=[str(bob.pk)], id="r-3")

    assert again["userIds"] == [] and same_ringer["userIds"] == []
    await callee.round_trip()  # no second incoming-call
    await reply(callee, first["ringId"], "decline", id="d")
    await acked_with_ring_ended(callee, "webrtc:ring-reply", "d", first["ringId"], "declined")
    await ring_updated(a, first["ringId"], bob, "declined")
    await ring_updated(c, first["ringId"], bob, "declined")

    fresh = await ring(c, id="r-4")
    assert fresh["userIds"] == [str(bob.pk)] and fresh["ringId"] != first["ringId"]
    assert (await incoming(callee, fresh))["from"]["userId"] == str(carol.pk)


async def test_a_user_rung_for_one_room_is_rung_for_another_too(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group
) -> None:
    (a,) = await in_room(ROOM, alice, **of(team))
    (c,) = await in_room("team-call-2", carol, **of(team))
    callee = await connect(bob)
    first = await ring(a, user_ids=[str(bob.pk)])
    await incoming(callee, first)

    second = await ring(c, room="team-call-2", user_ids=[str(bob.pk)], id="r-2")

    assert second["userIds"] == [str(bob.pk)] and second["ringId"] != first["ringId"]
    assert (await incoming(callee, second))["callRoomId"] == "team-call-2"
    late = await connect(bob)  # both ring it as it connects
    assert {(await late.expect("webrtc:incoming-call"))["data"]["ringId"] for _ in range(2)} == {
        first["ringId"],
        second["ringId"],
    }
    await late.round_trip()


async def test_a_connection_opened_while_rung_gets_the_incoming_call_right_after_connected(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, team: Group
) -> None:
    """Tests that a user without any connection is rung too: each connection it opens
    while rung gets incoming-call as the frame right after webrtc:connected (the connect
    fixture consumed that one), and none once the ring is over."""
    (a,) = await in_room(ROOM, alice, **of(team))
    started = await ring(a, user_ids=[str(bob.pk)])
    assert started["userIds"] == [str(bob.pk)]

    phone = await connect(bob)
    call = await incoming(phone, started)
    assert call["from"]["socketId"] == a.socket_id
    await phone.round_trip()
    laptop = await connect(bob)
    await incoming(laptop, started)

    await reply(laptop, started["ringId"], "accept", id="y")
    await acked_with_ring_ended(laptop, "webrtc:ring-reply", "y", started["ringId"], "accepted")
    await ring_ended(phone, started["ringId"], "accepted")
    await ring_updated(a, started["ringId"], bob, "accepted")
    await (await connect(bob)).round_trip()  # nothing after connected any more


# ---------------------------------------------------------------------------
# The ways a ring ends
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("response", "reason"), [("accept", "accepted"), ("decline", "declined")])
async def test_a_reply_on_one_connection_ends_the_ring_on_all_and_tells_the_room(
    in_room: InRoom,
    connect: ConnectFactory,
    alice: User,
    bob: User,
    carol: User,
    team: Group,
    response: str,
    reason: str,
) -> None:
    a, c = await in_room(ROOM, alice, carol, **of(team))
    phone, laptop = await connect(bob), await connect(bob)
    alice_elsewhere = await connect(alice)
    started = await ring(a)
    await incoming(phone, started)
    await incoming(laptop, started)

    await reply(laptop, started["ringId"], response, id="y")

    await acked_with_ring_ended(laptop, "webrtc:ring-reply", "y", started["ringId"], reason)
    await ring_ended(phone, started["ringId"], reason)
    for member in (a, c):
        await ring_updated(member, started["ringId"], bob, reason)
    for client in (phone, laptop, a, c, alice_elsewhere):
        await client.round_trip()  # once each, and nothing to the ringer's other connection


async def test_a_reply_without_an_id_is_not_acked_but_ends_the_ring(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, team: Group
) -> None:
    (a,) = await in_room(ROOM, alice, **of(team))
    callee = await connect(bob)
    started = await ring(a)
    await incoming(callee, started)

    await reply(callee, started["ringId"], "decline", id=None)

    await ring_ended(callee, started["ringId"], "declined")
    await ring_updated(a, started["ringId"], bob, "declined")
    await callee.round_trip()


async def test_joining_the_room_accepts_the_ring(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, team: Group
) -> None:
    """Tests that a callee joining the call ends its ring as ``accepted``: every one of its
    connections gets ring-ended, and everyone in the room (the joiner included) ring-updated."""
    (a,) = await in_room(ROOM, alice, **of(team))
    phone, laptop = await connect(bob), await connect(bob)
    started = await ring(a)
    await incoming(phone, started)
    await incoming(laptop, started)

    await phone.join(ROOM, **of(team))

    frames = await next_frames(phone, 2)
    assert frames.keys() == {"webrtc:ring-ended", "webrtc:ring-updated"}, frames
    assert frames["webrtc:ring-ended"]["data"] == {
        "ringId": started["ringId"],
        "callRoomId": ROOM,
        "reason": "accepted",
    }
    assert frames["webrtc:ring-updated"]["data"] == {
        "ringId": started["ringId"],
        "callRoomId": ROOM,
        "userId": str(bob.pk),
        "status": "accepted",
    }
    await ring_ended(laptop, started["ringId"], "accepted")
    assert (await a.expect("webrtc:participant-joined"))["data"]["participant"]["socketId"] == phone.socket_id
    await ring_updated(a, started["ringId"], bob, "accepted")
    for client in (phone, laptop, a):
        await client.round_trip()
    await reply(laptop, started["ringId"], "accept", id="late")
    await refused(laptop, "ring-not-found", "webrtc:ring-reply", "late")


async def test_joining_another_room_of_the_same_id_does_not_accept_the_ring(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, team: Group
) -> None:
    """Tests that the ungrouped room ``team-call`` is not the group's: joining it leaves
    the ring of the group's call ringing."""
    (a,) = await in_room(ROOM, alice, **of(team))
    phone, laptop = await connect(bob), await connect(bob)
    started = await ring(a)
    await incoming(phone, started)
    await incoming(laptop, started)

    await phone.join(ROOM)

    await all_silent(phone, laptop, a)
    await reply(laptop, started["ringId"], "decline", id="d")
    await acked_with_ring_ended(laptop, "webrtc:ring-reply", "d", started["ringId"], "declined")


async def test_a_ring_not_answered_in_time_is_missed_once(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group
) -> None:
    a, c = await in_room(ROOM, alice, carol, **of(team))
    phone, laptop = await connect(bob), await connect(bob)
    with override_settings(CALLS_RING_TIMEOUT_SECS=0):
        started = await ring(a)
    await incoming(phone, started)
    await incoming(laptop, started)

    assert await ringing.expire_rings() == 1

    for connection in (phone, laptop):
        await ring_ended(connection, started["ringId"], "missed")
    for member in (a, c):
        await ring_updated(member, started["ringId"], bob, "missed")
    assert await ringing.expire_rings() == 0
    for client in (phone, laptop, a, c):
        await client.round_trip()
    await reply(phone, started["ringId"], "accept", id="late")
    await refused(phone, "ring-not-found", "webrtc:ring-reply", "late")
    await cancel(a, started["ringId"], id="late-cancel")
    await refused(a, "ring-not-found", "webrtc:ring-cancel", "late-cancel")


async def test_only_the_callees_still_ringing_miss_the_ring(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group
) -> None:
    (a,) = await in_room(ROOM, alice, **of(team))
    b, c = await connect(bob), await connect(carol)
    with override_settings(CALLS_RING_TIMEOUT_SECS=0):
        started = await ring(a)
    assert sorted(started["userIds"]) == sorted([str(bob.pk), str(carol.pk)])
    await incoming(b, started)
    await incoming(c, started)
    await reply(c, started["ringId"], "decline", id="d")
    await acked_with_ring_ended(c, "webrtc:ring-reply", "d", started["ringId"], "declined")
    await ring_updated(a, started["ringId"], carol, "declined")

    assert await ringing.expire_rings() == 1

    await ring_ended(b, started["ringId"], "missed")
    await ring_updated(a, started["ringId"], bob, "missed")
    await all_silent(a, b, c)


async def test_the_ringer_cancels_for_every_callee_still_ringing(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, dave: User, team: Group
) -> None:
    (a,) = await in_room(ROOM, alice, **of(team))
    phone, laptop, c = await connect(bob), await connect(bob), await connect(carol)
    started = await ring(a)
    for callee in (phone, laptop, c):
        await incoming(callee, started)
    await reply(c, started["ringId"], "decline", id="d")
    await acked_with_ring_ended(c, "webrtc:ring-reply", "d", started["ringId"], "declined")
    await ring_updated(a, started["ringId"], carol, "declined")

    await cancel(a, started["ringId"], id="c")

    frames = await next_frames(a, 2)
    assert frames.keys() == {"webrtc:ack", "webrtc:ring-updated"}, frames
    assert frames["webrtc:ack"]["id"] == "c"
    assert frames["webrtc:ack"]["data"] == {"event": "webrtc:ring-cancel"}
    assert frames["webrtc:ring-updated"]["data"] == {
        "ringId": started["ringId"],
        "callRoomId": ROOM,
        "userId": str(bob.pk),
        "status": "cancelled",
    }
    await ring_ended(phone, started["ringId"], "cancelled")
    await ring_ended(laptop, started["ringId"], "cancelled")
    for client in (a, phone, laptop, c):
        await client.round_trip()  # carol's ring had ended already
    await cancel(a, started["ringId"], id="again")
    await refused(a, "ring-not-found", "webrtc:ring-cancel", "again")


async def test_another_connection_of_the_ringers_user_may_cancel(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, team: Group
) -> None:
    (a,) = await in_room(ROOM, alice, **of(team))
    callee, alice_elsewhere = await connect(bob), await connect(alice)
    started = await ring(a, user_ids=[str(bob.pk)])
    await incoming(callee, started)

    await cancel(alice_elsewhere, started["ringId"], id="c")

    await acked(alice_elsewhere, "webrtc:ring-cancel", "c")
    await ring_ended(callee, started["ringId"], "cancelled")
    await ring_updated(a, started["ringId"], bob, "cancelled")
    await all_silent(a, callee, alice_elsewhere)


@pytest.mark.parametrize("who", ["the callee", "someone else in the room", "an outsider"])
async def test_a_cancel_by_anyone_but_the_ringers_user_is_ring_not_found(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, dave: User, team: Group, who: str
) -> None:
    a, c = await in_room(ROOM, alice, carol, **of(team))
    callee = await connect(bob)
    started = await ring(a)
    await incoming(callee, started)
    canceller = {"the callee": callee, "someone else in the room": c, "an outsider": await connect(dave)}[who]

    await cancel(canceller, started["ringId"], id="c")

    await refused(canceller, "ring-not-found", "webrtc:ring-cancel", "c")
    await all_silent(a, c, callee)
    # The ring goes on: bob can still answer it.
    await reply(callee, started["ringId"], "accept", id="y")
    await acked_with_ring_ended(callee, "webrtc:ring-reply", "y", started["ringId"], "accepted")


async def test_a_second_reply_is_ring_not_found_on_any_connection(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, team: Group
) -> None:
    (a,) = await in_room(ROOM, alice, **of(team))
    phone, laptop = await connect(bob), await connect(bob)
    started = await ring(a)
    await incoming(phone, started)
    await incoming(laptop, started)
    await reply(phone, started["ringId"], "decline", id="first")
    await acked_with_ring_ended(phone, "webrtc:ring-reply", "first", started["ringId"], "declined")
    await ring_ended(laptop, started["ringId"], "declined")
    await ring_updated(a, started["ringId"], bob, "declined")

    for connection, response in ((phone, "decline"), (laptop, "accept")):
        await reply(connection, started["ringId"], response, id="again")
        await refused(connection, "ring-not-found", "webrtc:ring-reply", "again")
    await all_silent(a, phone, laptop)


async def test_replies_on_two_connections_at_once_end_the_ring_once(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, team: Group
) -> None:
    (a,) = await in_room(ROOM, alice, **of(team))
    phone, laptop = await connect(bob), await connect(bob)
    started = await ring(a)
    await incoming(phone, started)
    await incoming(laptop, started)

    await reply(phone, started["ringId"], "accept", id="p")
    await reply(laptop, started["ringId"], "decline", id="l")

    outcomes = {}
    for connection, id in ((phone, "p"), (laptop, "l")):
        frames = await next_frames(connection, 2)
        assert "webrtc:ring-ended" in frames, frames
        if "webrtc:ack" in frames:
            assert frames["webrtc:ack"]["id"] == id
            outcomes[id] = frames["webrtc:ring-ended"]["data"]["reason"]
        else:
            error = frames["webrtc:signaling-error"]
            assert (error["id"], error["data"]["error"]) == (id, "ring-not-found"), error
    assert len(outcomes) == 1, outcomes
    reason = next(iter(outcomes.values()))
    assert reason == {"p": "accepted", "l": "declined"}[next(iter(outcomes))]
    await ring_updated(a, started["ringId"], bob, reason)
    for client in (a, phone, laptop):
        await client.round_trip()


@pytest.mark.parametrize("who", ["the ringer", "a member not rung", "an outsider", "unknown ring"])
async def test_a_reply_to_a_ring_that_is_not_ones_own_is_ring_not_found(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, dave: User, team: Group, who: str
) -> None:
    a, c = await in_room(ROOM, alice, carol, **of(team))
    callee = await connect(bob)
    started = await ring(a)
    await incoming(callee, started)
    replier = {"the ringer": a, "a member not rung": c, "an outsider": await connect(dave), "unknown ring": callee}[who]
    ring_id = "no-such-ring" if who == "unknown ring" else started["ringId"]

    await reply(replier, ring_id, "accept", id="y")

    await refused(replier, "ring-not-found", "webrtc:ring-reply", "y")
    await all_silent(a, c, callee)
    await reply(callee, started["ringId"], "decline", id="d")
    await acked_with_ring_ended(callee, "webrtc:ring-reply", "d", started["ringId"], "declined")


@pytest.mark.parametrize("how", ["leave", "disconnect", "switch room"])
async def test_the_call_ending_with_its_last_participant_ends_its_rings_as_call_ended(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group, how: str
) -> None:
    (a,) = await in_room(ROOM, alice, **of(team))
    b, c = await connect(bob), await connect(carol)
    started = await ring(a)
    await incoming(b, started)
    await incoming(c, started)

    if how == "leave":
        await a.leave(ROOM)
    elif how == "disconnect":
        await a.close()
    else:
        await a.join("elsewhere")

    for callee in (b, c):
        frames = await next_frames(callee, 1)
        assert frames["webrtc:ring-ended"]["data"] == {
            "ringId": started["ringId"],
            "callRoomId": ROOM,
            "reason": "call-ended",
        }
    await all_silent(b, c)
    if how != "disconnect":
        await a.round_trip()  # nobody left in the room to be told
    await reply(b, started["ringId"], "accept", id="late")
    await refused(b, "ring-not-found", "webrtc:ring-reply", "late")


async def test_the_ringer_leaving_a_call_that_goes_on_leaves_the_ring_ringing(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group
) -> None:
    a, c = await in_room(ROOM, alice, carol, **of(team))
    callee = await connect(bob)
    started = await ring(a)
    await incoming(callee, started)

    await a.leave(ROOM)

    await c.expect("webrtc:participant-left")
    await all_silent(callee, c)
    await callee.join(ROOM, **of(team))
    await next_frames(callee, 2)  # its ring-ended and ring-updated, accepted
    await c.expect("webrtc:participant-joined")
    await ring_updated(c, started["ringId"], bob, "accepted")


async def test_a_moderator_ending_the_call_ends_its_rings_as_call_ended(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group
) -> None:
    a, c = await in_room(ROOM, alice, carol, **of(team))
    phone, laptop = await connect(bob), await connect(bob)
    started = await ring(a)
    await incoming(phone, started)
    await incoming(laptop, started)

    await a.send("webrtc:end-call", {"callRoomId": ROOM}, id="e")

    for connection in (phone, laptop):
        await ring_ended(connection, started["ringId"], "call-ended")
    frames = await next_frames(a, 2)
    assert frames.keys() == {"webrtc:ack", "webrtc:call-ended"}, frames
    assert (await c.expect("webrtc:call-ended"))["data"]["callRoomId"] == ROOM
    await all_silent(a, c, phone, laptop)  # nobody is in the room to get ring-updated


# ---------------------------------------------------------------------------
# Call history
# ---------------------------------------------------------------------------


async def test_every_ring_and_its_outcome_per_callee_is_in_the_call_history(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group
) -> None:
    (a,) = await in_room(ROOM, alice, **of(team))
    b, c = await connect(bob), await connect(carol)
    first = await ring(a)
    await incoming(b, first)
    await incoming(c, first)
    await history_written()
    ringing_rows = [
        (row.ring_id, row.ringer_id, row.callee_id, row.outcome, row.ended_at)
        async for row in CallRing.objects.order_by("callee_id")
    ]
    assert ringing_rows == [
        (first["ringId"], alice.pk, bob.pk, "", None),
        (first["ringId"], alice.pk, carol.pk, "", None),
    ]

    await reply(b, first["ringId"], "decline", id="d")
    await acked_with_ring_ended(b, "webrtc:ring-reply", "d", first["ringId"], "declined")
    await ring_updated(a, first["ringId"], bob, "declined")
    await c.join(ROOM, **of(team))  # accepted
    await next_frames(c, 2)
    await a.expect("webrtc:participant-joined")
    await ring_updated(a, first["ringId"], carol, "accepted")
    with override_settings(CALLS_RING_TIMEOUT_SECS=0):
        missed = await ring(a, id="r-2")
    await incoming(b, missed)
    assert await ringing.expire_rings() == 1
    await ring_ended(b, missed["ringId"], "missed")
    await ring_updated(a, missed["ringId"], bob, "missed")
    await ring_updated(c, missed["ringId"], bob, "missed")
    cancelled = await ring(c, id="r-3")
    await incoming(b, cancelled)
    await cancel(c, cancelled["ringId"], id="c")
    await next_frames(c, 2)
    await ring_updated(a, cancelled["ringId"], bob, "cancelled")
    await ring_ended(b, cancelled["ringId"], "cancelled")
    ended = await ring(c, id="r-4")
    await incoming(b, ended)
    await a.leave(ROOM)
    await c.expect("webrtc:participant-left")
    await c.leave(ROOM)
    await ring_ended(b, ended["ringId"], "call-ended")

    await history_written()

    session = await CallRoom.objects.aget(room_id=ROOM, group=team)
    rows = [
        (row.call_id, row.ring_id, row.ringer_id, row.callee_id, row.outcome)
        async for row in CallRing.objects.order_by("started_at", "callee_id")
    ]
    assert rows == [
        (session.pk, first["ringId"], alice.pk, bob.pk, "declined"),
        (session.pk, first["ringId"], alice.pk, carol.pk, "accepted"),
        (session.pk, missed["ringId"], alice.pk, bob.pk, "missed"),
        (session.pk, cancelled["ringId"], carol.pk, bob.pk, "cancelled"),
        (session.pk, ended["ringId"], carol.pk, bob.pk, "call-ended"),
    ]
    async for row in CallRing.objects.all():
        assert row.ended_at is not None and row.started_at <= row.ended_at
        started = {first["ringId"]: first, missed["ringId"]: missed}.get(row.ring_id)
        if started is not None:
            assert abs(row.expires_at - utc(started["expiresAt"])) < dt.timedelta(milliseconds=1)
