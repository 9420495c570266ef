"""Tests that moderation follows docs/protocol.md §10 as its "How this server does it" decides it:
who moderates which room, kick (and its ban), end-call and lock-room, what each one
tells whom, what it refuses, and what the call history records."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from accounts.models import User
from calls.models import CallParticipant, CallRoom, ModerationAction
from groups.models import Group, Membership
from tests.calls.conftest import InRoom, all_silent
from tests.conftest import Client, ConnectFactory, history_written, make_user

pytestmark = pytest.mark.django_db(transaction=True)

ROOM = "team-call"
BAN_EXPIRY_MARGIN_SECS = 0.05  # past bannedUntil before the rejoin that must pass


def utc(value: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert moment.utcoffset() == dt.timedelta(0), value
    return moment


def of(team: Group) -> dict[str, Any]:
    return {"metadata": {"groupId": team.pk}}


@pytest.fixture
def erin(team: Group) -> User:
    """A staff user, a plain member of the team."""
    user = make_user("erin", display_name="Erin Staff")
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    Membership.objects.create(group=team, user=user)
    return user


@pytest.fixture
def carol_admin(team: Group, carol: User) -> User:
    """carol, made an admin of the team."""
    Membership.objects.filter(group=team, user=carol).update(role=Membership.Role.ADMIN)
    return carol


async def participant_of(client: Client, room: str, **extra: Any) -> dict[str, Any]:
    """The client's participant object (a rejoin of its room, which announces nothing)."""
    return (await client.join(room, **extra))["participant"]


async def next_frames(client: Client, count: int) -> dict[str, dict[str, Any]]:
    """The client's next ``count`` frames, in any order, by event (each event once)."""
    frames: dict[str, dict[str, Any]] = {}
    for _ in range(count):
        frame = await client.receive()
        assert frame["event"] not in frames, f"{frame['event']} twice: {frames[frame['event']]} and {frame}"
        frames[frame["event"]] = frame
    return frames


def assert_ack(frame: dict[str, Any], event: str, id: str) -> None:
    assert frame == {"event": "webrtc:ack", "data": {"event": event}, "id": id}, frame


async def refused(client: Client, code: str, event: str, id: str) -> dict[str, Any]:
    frame = await client.expect_error(code, event=event)
    assert frame["id"] == id, frame
    return frame


async def kick(client: Client, target: Client, room: str = ROOM, id: str = "k", **extra: Any) -> None:
    await client.send("webrtc:kick", {"callRoomId": room, "targetSocketId": target.socket_id, **extra}, id=id)


async def kicked_ok(moderator: Client, target: Client, others: list[Client], room: str = ROOM, id: str = "k") -> dict:
    """After a kick of ``target`` by ``moderator``: the moderator's ack and
    participant-left (either order), the others' participant-left ``kicked``, the
    target's ``kicked`` (returned) and nothing else to anyone."""
    frames = await next_frames(moderator, 2)
    assert frames.keys() == {"webrtc:ack", "webrtc:participant-left"}, frames
    assert_ack(frames["webrtc:ack"], "webrtc:kick", id)
    departures = [frames["webrtc:participant-left"]]
    for other in others:
        departures.append(await other.expect("webrtc:participant-left"))
    for frame in departures:
        assert frame["data"]["callRoomId"] == room, frame
        assert frame["data"]["participant"]["socketId"] == target.socket_id, frame
        assert frame["data"]["reason"] == "kicked", frame
    kicked = await target.expect("webrtc:kicked")
    assert kicked["data"]["callRoomId"] == room, kicked
    assert "id" not in kicked, kicked
    for client in (moderator, target, *others):
        await client.round_trip()  # the target gets no room-left
    return kicked["data"]


async def ice_to(sender: Client, target: Client, room: str = ROOM, id: str = "ice") -> None:
    data = {
        "callRoomId": room,
        "targetSocketId": target.socket_id,
        "candidate": "candidate:1 1 udp 1 10.0.0.1 1 typ host",
    }
    await sender.send("webrtc:ice-candidate", data, id=id)


async def relays(sender: Client, target: Client, room: str = ROOM) -> None:
    """A candidate from ``sender`` reaches ``target``: both are in ``room``."""
    await ice_to(sender, target, room)
    assert_ack(await sender.expect("webrtc:ack"), "webrtc:ice-candidate", "ice")
    assert (await target.expect("webrtc:ice-candidate"))["data"]["fromSocketId"] == sender.socket_id


# ---------------------------------------------------------------------------
# Who moderates
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "data"),
    [
        ("webrtc:kick", {"targetSocketId": None}),
        ("webrtc:kick", {"targetSocketId": None, "banSecs": 600}),
        ("webrtc:end-call", {}),
        ("webrtc:lock-room", {"locked": True}),
    ],
)
async def test_a_member_who_does_not_moderate_is_forbidden_and_nothing_changes(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group, event: str, data: dict
) -> None:
    a, b, c = await in_room(ROOM, alice, bob, carol, **of(team))
    if "targetSocketId" in data:
        data = {**data, "targetSocketId": c.socket_id}

    await b.send(event, {"callRoomId": ROOM, **data}, id="m")

    await refused(b, "forbidden", event, "m")
    await all_silent(a, b, c)
    await relays(c, a)  # carol is still in the call, which goes on
    joined = await (await connect(carol)).join(ROOM, **of(team))
    assert joined["locked"] is False
    assert joined["participantCount"] == 4


@pytest.mark.parametrize(
    ("event", "data"),
    [("webrtc:kick", {"targetSocketId": "x"}), ("webrtc:end-call", {}), ("webrtc:lock-room", {"locked": True})],
)
async def test_a_moderator_must_be_in_the_room(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group, event: str, data: dict
) -> None:
    b, c = await in_room(ROOM, bob, carol, **of(team))
    outside = await connect(alice)
    (elsewhere,) = await in_room("other-call", alice, **of(team))
    if "targetSocketId" in data:
        data = {"targetSocketId": c.socket_id}

    for client in (outside, elsewhere):
        await client.send(event, {"callRoomId": ROOM, **data}, id="m")
        await refused(client, "not-in-room", event, "m")
    await all_silent(b, c)
    await relays(c, b)


async def test_in_a_room_without_a_group_its_creator_moderates_and_others_do_not(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group
) -> None:
    """Tests that a group's owner has no say in an ungrouped room, whose moderator is the
    user who created its session (on any of its connections)."""
    b, a, c = await in_room("open-call", bob, alice, carol)

    await kick(a, c, room="open-call", id="owner")
    await refused(a, "forbidden", "webrtc:kick", "owner")
    await a.send("webrtc:lock-room", {"callRoomId": "open-call", "locked": True}, id="lock")
    await refused(a, "forbidden", "webrtc:lock-room", "lock")
    await all_silent(a, b, c)

    bob_again = await connect(bob)
    await bob_again.join("open-call")
    for other in (b, a, c):
        await other.expect("webrtc:participant-joined")
    await kick(bob_again, c, room="open-call")
    await kicked_ok(bob_again, c, [b, a], room="open-call")


async def test_a_group_admin_moderates_its_groups_room(
    in_room: InRoom, alice: User, bob: User, carol_admin: User, team: Group
) -> None:
    c, b, a = await in_room(ROOM, carol_admin, bob, alice, **of(team))

    await kick(c, b)

    await kicked_ok(c, b, [a])


async def test_a_staff_user_moderates_any_room(
    in_room: InRoom, alice: User, bob: User, carol: User, erin: User, team: Group
) -> None:
    b, c, e = await in_room("open-call", bob, carol, erin)
    await kick(e, c, room="open-call")
    await kicked_ok(e, c, [b], room="open-call")

    a, b2, e2 = await in_room(ROOM, alice, bob, erin, **of(team))
    await kick(e2, b2)
    await kicked_ok(e2, b2, [a])


# ---------------------------------------------------------------------------
# Kick
# ---------------------------------------------------------------------------


async def test_the_groups_owner_kicks_a_member(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group
) -> None:
    a, b, c = await in_room(ROOM, alice, bob, carol, **of(team))
    by = await participant_of(a, ROOM, **of(team))

    await kick(a, b)

    kicked = await kicked_ok(a, b, [c])
    assert kicked == {"callRoomId": ROOM, "by": by}  # no bannedUntil without a ban
    joined = await (await connect(carol)).join(ROOM, **of(team))
    assert [p["socketId"] for p in joined["existingParticipants"]] == [a.socket_id, c.socket_id]
    # Without a ban the kicked user may come back.
    assert (await b.join(ROOM, **of(team)))["participantCount"] == 4


@pytest.mark.parametrize("grouped", [True, False], ids=["groups-room", "ungrouped-room"])
async def test_a_kicked_participants_requests_for_the_room_are_refused(
    in_room: InRoom, alice: User, bob: User, carol: User, team: Group, grouped: bool
) -> None:
    """Tests that the kicked target is out of the room, which goes on without it: its
    relays (and every other request naming the room) are refused and reach nobody. A
    relay names a room by its callRoomId only, so a sender in no room names the ungrouped
    room of that id (§5 rule 1): a group's room live without it is, to it, no room at all
    (room-not-found), as after any leave; the ungrouped room has a live session without
    the sender (not-in-room, §5 rule 5)."""
    extra = of(team) if grouped else {}
    relay_error = "room-not-found" if grouped else "not-in-room"
    a, b, c = await in_room(ROOM, alice, bob, carol, **extra)
    await kick(a, b)
    await kicked_ok(a, b, [c])

    await ice_to(b, a, id="ice")
    await refused(b, relay_error, "webrtc:ice-candidate", "ice")
    offer = {"type": "offer", "sdp": "v=0"}
    await b.send("webrtc:offer", {"callRoomId": ROOM, "targetSocketId": c.socket_id, "offer": offer}, id="o")
    await refused(b, relay_error, "webrtc:offer", "o")
    await b.send("webrtc:ice-candidate", {"callRoomId": ROOM, "candidate": "candidate:2"}, id="all")
    await refused(b, relay_error, "webrtc:ice-candidate", "all")
    await b.send("webrtc:media-state", {"callRoomId": ROOM, "audio": False, "video": False}, id="m")
    await refused(b, "not-in-room", "webrtc:media-state", "m")
    await b.send("webrtc:leave-room", {"callRoomId": ROOM}, id="l")
    await refused(b, "not-in-room", "webrtc:leave-room", "l")
    await all_silent(a, c)
    await relays(a, c)


async def test_a_kicked_participant_can_neither_ring_nor_moderate(
    in_room: InRoom, alice: User, carol_admin: User, erin: User, team: Group
) -> None:
    """Tests that a moderator kicked (by staff) moderates the room no more: out of it."""
    e, c, a = await in_room(ROOM, erin, carol_admin, alice, **of(team))
    await kick(e, c)
    await kicked_ok(e, c, [a])

    for event, data in (
        ("webrtc:ring", {}),
        ("webrtc:kick", {"targetSocketId": a.socket_id}),
        ("webrtc:lock-room", {"locked": True}),
        ("webrtc:end-call", {}),
    ):
        await c.send(event, {"callRoomId": ROOM, **data}, id="x")
        await refused(c, "not-in-room", event, "x")
    await all_silent(a, e)


async def test_kicking_oneself_is_forbidden(in_room: InRoom, alice: User, bob: User, erin: User, team: Group) -> None:
    a, b, e = await in_room(ROOM, alice, bob, erin, **of(team))

    for moderator in (a, e):
        await kick(moderator, moderator, id="self")
        await refused(moderator, "forbidden", "webrtc:kick", "self")
    await all_silent(a, b, e)
    await relays(a, e)


async def test_kicking_someone_not_in_the_room_is_participant_not_found(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group
) -> None:
    a, b = await in_room(ROOM, alice, bob, **of(team))
    (c,) = await in_room("other-call", carol, **of(team))
    idle = await connect(carol)

    for target_socket_id in (c.socket_id, idle.socket_id, "no-such-socket"):
        await a.send("webrtc:kick", {"callRoomId": ROOM, "targetSocketId": target_socket_id}, id="k")
        await refused(a, "participant-not-found", "webrtc:kick", "k")
    await all_silent(a, b, c, idle)
    await relays(b, a)


async def test_only_staff_may_kick_a_moderator(
    in_room: InRoom, alice: User, bob: User, carol_admin: User, erin: User, team: Group
) -> None:
    """Tests that the owner cannot kick an admin, nor an admin the owner, nor either a
    staff user; a staff user kicks the owner."""
    a, c, e, b = await in_room(ROOM, alice, carol_admin, erin, bob, **of(team))

    for moderator, target in ((a, c), (c, a), (a, e), (c, e)):
        await kick(moderator, target, id="mod")
        await refused(moderator, "forbidden", "webrtc:kick", "mod")
        await kick(moderator, target, id="mod-ban", banSecs=600)
        await refused(moderator, "forbidden", "webrtc:kick", "mod-ban")
    await all_silent(a, c, e, b)

    await kick(e, a)
    kicked = await kicked_ok(e, a, [c, b])
    assert kicked["by"]["userId"] == str(erin.pk)


@pytest.mark.parametrize("ban_secs", [-1, 86401, "60", 1.5])
async def test_a_malformed_kick_is_invalid(in_room: InRoom, alice: User, bob: User, team: Group, ban_secs: Any) -> None:
    a, b = await in_room(ROOM, alice, bob, **of(team))

    await kick(a, b, banSecs=ban_secs)

    await refused(a, "invalid-message", "webrtc:kick", "k")
    await all_silent(a, b)
    await relays(a, b)


# ---------------------------------------------------------------------------
# Bans
# ---------------------------------------------------------------------------


async def test_a_kick_with_a_ban_keeps_the_users_joins_out_until_banned_until(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group
) -> None:
    a, b, c = await in_room(ROOM, alice, bob, carol, **of(team))
    by = await participant_of(a, ROOM, **of(team))
    bob_laptop = await connect(bob)
    before = dt.datetime.now(dt.UTC)

    await kick(a, b, banSecs=600)

    kicked = await kicked_ok(a, b, [c])
    after = dt.datetime.now(dt.UTC)
    assert kicked.keys() == {"callRoomId", "by", "bannedUntil"}
    assert kicked["by"] == by
    until = utc(kicked["bannedUntil"])
    ban = dt.timedelta(seconds=600)
    assert before + ban - dt.timedelta(milliseconds=5) <= until <= after + ban + dt.timedelta(milliseconds=5)
    for connection in (b, bob_laptop):  # the user is banned, on every connection
        await connection.send("webrtc:join-room", {"callRoomId": ROOM, **of(team)}, id="j")
        refusal = await refused(connection, "forbidden", "webrtc:join-room", "j")
        assert refusal["data"]["details"] == {"bannedUntil": kicked["bannedUntil"]}
    await all_silent(a, c)
    # Only that room: the ungrouped room of the same id and other rooms are open to bob.
    assert (await b.join(ROOM))["participantCount"] == 1
    assert (await bob_laptop.join("other-call", **of(team)))["participantCount"] == 1
    # A refused join changes nothing, not even the joiner's current room.
    await b.send("webrtc:join-room", {"callRoomId": ROOM, **of(team)}, id="j2")
    await refused(b, "forbidden", "webrtc:join-room", "j2")
    again = await b.join(ROOM)
    assert again["participantCount"] == 1 and again["participant"]["socketId"] == b.socket_id
    # And only that user.
    assert (await (await connect(carol)).join(ROOM, **of(team)))["participantCount"] == 3


async def test_a_ban_holds_across_sessions_of_the_room(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group
) -> None:
    a, b, c = await in_room(ROOM, alice, bob, carol, **of(team))
    await kick(a, b, banSecs=600)
    kicked = await kicked_ok(a, b, [c])
    await a.leave(ROOM)
    await c.expect("webrtc:participant-left")
    await c.leave(ROOM)  # the session is over

    await b.send("webrtc:join-room", {"callRoomId": ROOM, **of(team)}, id="j")

    refusal = await refused(b, "forbidden", "webrtc:join-room", "j")
    assert refusal["data"]["details"] == {"bannedUntil": kicked["bannedUntil"]}
    assert (await c.join(ROOM, **of(team)))["participantCount"] == 1  # a new session
    await b.send("webrtc:join-room", {"callRoomId": ROOM, **of(team)}, id="j2")
    await refused(b, "forbidden", "webrtc:join-room", "j2")
    await c.round_trip()


async def test_a_ban_expires_by_itself(in_room: InRoom, alice: User, bob: User, team: Group) -> None:
    """Tests a one-second ban: refused until bannedUntil, admitted after it. The wait for
    bannedUntil is the rule under test (at most a second and a margin)."""
    a, b = await in_room(ROOM, alice, bob, **of(team))
    await kick(a, b, banSecs=1)
    kicked = await kicked_ok(a, b, [])
    until = utc(kicked["bannedUntil"])
    await b.send("webrtc:join-room", {"callRoomId": ROOM, **of(team)}, id="early")
    await refused(b, "forbidden", "webrtc:join-room", "early")

    wait = (until - dt.datetime.now(dt.UTC)).total_seconds() + BAN_EXPIRY_MARGIN_SECS
    assert wait <= 1 + BAN_EXPIRY_MARGIN_SECS
    await asyncio.sleep(max(0.0, wait))

    joined = await b.join(ROOM, **of(team))
    assert joined["participantCount"] == 2
    assert (await a.expect("webrtc:participant-joined"))["data"]["participant"]["socketId"] == b.socket_id


async def test_a_kick_with_ban_secs_zero_bans_nobody(in_room: InRoom, alice: User, bob: User, team: Group) -> None:
    a, b = await in_room(ROOM, alice, bob, **of(team))
    await kick(a, b, banSecs=0)
    kicked = await kicked_ok(a, b, [])
    assert "bannedUntil" not in kicked
    assert (await b.join(ROOM, **of(team)))["participantCount"] == 2


# ---------------------------------------------------------------------------
# End the call
# ---------------------------------------------------------------------------


async def test_end_call_puts_everyone_out_and_ends_the_session(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group
) -> None:
    a, b, c = await in_room(ROOM, alice, bob, carol, **of(team))
    by = await participant_of(a, ROOM, **of(team))
    (watcher,) = await in_room("other-call", alice, **of(team))

    await a.send("webrtc:end-call", {"callRoomId": ROOM}, id="e")

    frames = await next_frames(a, 2)
    assert frames.keys() == {"webrtc:ack", "webrtc:call-ended"}, frames
    assert_ack(frames["webrtc:ack"], "webrtc:end-call", "e")
    ended = {"event": "webrtc:call-ended", "data": {"callRoomId": ROOM, "by": by}}
    assert frames["webrtc:call-ended"] == ended
    for other in (b, c):
        assert await other.expect("webrtc:call-ended") == ended
    for client in (a, b, c, watcher):
        await client.round_trip()  # no participant-left, no room-left
    # Nobody is in the room: it has no live session.
    for sender, target in ((b, c), (a, b), (c, a)):
        await ice_to(sender, target, id="after")
        await refused(sender, "room-not-found", "webrtc:ice-candidate", "after")
    await c.send("webrtc:leave-room", {"callRoomId": ROOM}, id="l")
    await refused(c, "not-in-room", "webrtc:leave-room", "l")
    joined = await b.join(ROOM, **of(team))
    assert joined["participantCount"] == 1 and joined["existingParticipants"] == []
    await all_silent(a, c)


async def test_end_call_is_recorded_as_ended_by_the_moderator(
    in_room: InRoom, alice: User, bob: User, carol: User, team: Group
) -> None:
    a, b, c = await in_room(ROOM, alice, bob, carol, **of(team))
    await a.send("webrtc:end-call", {"callRoomId": ROOM}, id="e")
    await next_frames(a, 2)
    for other in (b, c):
        await other.expect("webrtc:call-ended")

    await history_written()

    session = await CallRoom.objects.aget(room_id=ROOM)
    assert session.ended_by_id == alice.pk
    assert session.ended_at is not None
    reasons = [
        (row.socket_id, row.leave_reason, row.left_at is not None)
        async for row in CallParticipant.objects.filter(call=session).order_by("joined_at")
    ]
    assert reasons == [(client.socket_id, "call-ended", True) for client in (a, b, c)]
    actions = [
        (row.action, row.actor_id, row.target_user_id) async for row in ModerationAction.objects.filter(call=session)
    ]
    assert actions == [("end-call", alice.pk, None)]


async def test_a_session_ended_by_its_last_leave_has_no_ender(in_room: InRoom, alice: User, team: Group) -> None:
    (a,) = await in_room(ROOM, alice, **of(team))
    await a.leave(ROOM)
    await history_written()
    session = await CallRoom.objects.aget(room_id=ROOM)
    assert session.ended_at is not None and session.ended_by_id is None


# ---------------------------------------------------------------------------
# Lock
# ---------------------------------------------------------------------------


async def lock(moderator: Client, members: list[Client], locked: bool, room: str = ROOM, id: str = "l") -> None:
    """The moderator locks or unlocks: its ack and room-updated (either order), and
    room-updated to every other member, ``by`` the moderator."""
    await moderator.send("webrtc:lock-room", {"callRoomId": room, "locked": locked}, id=id)
    frames = await next_frames(moderator, 2)
    assert frames.keys() == {"webrtc:ack", "webrtc:room-updated"}, frames
    assert_ack(frames["webrtc:ack"], "webrtc:lock-room", id)
    update = frames["webrtc:room-updated"]
    assert update["data"]["callRoomId"] == room and update["data"]["locked"] is locked, update
    assert update["data"]["by"]["socketId"] == moderator.socket_id, update
    assert "id" not in update, update
    for member in members:
        assert await member.expect("webrtc:room-updated") == update
    for client in (moderator, *members):
        await client.round_trip()


async def test_a_locked_room_refuses_joins_by_non_moderators(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group
) -> None:
    a, b = await in_room(ROOM, alice, bob, **of(team))
    by = await participant_of(a, ROOM, **of(team))

    await lock(a, [b], True)

    carol_phone = await connect(carol)
    (carol_elsewhere,) = await in_room("other-call", carol, **of(team))
    bob_laptop = await connect(bob)
    for joiner in (carol_phone, carol_elsewhere, bob_laptop):
        await joiner.send("webrtc:join-room", {"callRoomId": ROOM, **of(team)}, id="j")
        await refused(joiner, "room-locked", "webrtc:join-room", "j")
    await all_silent(a, b)
    # A refused join changes nothing: carol is still in her call.
    assert (await carol_elsewhere.join("other-call", **of(team)))["participantCount"] == 1
    # The members see the lock on a rejoin, and who set it was the moderator.
    assert (await b.join(ROOM, **of(team)))["locked"] is True
    assert by["socketId"] == a.socket_id


async def test_moderators_pass_a_lock(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol_admin: User, erin: User, team: Group
) -> None:
    b, a = await in_room(ROOM, bob, alice, **of(team))
    await lock(a, [b], True)

    members = [b, a]
    for user in (alice, carol_admin, erin):
        joiner = await connect(user)
        joined = await joiner.join(ROOM, **of(team))
        assert joined["locked"] is True
        assert joined["participantCount"] == len(members) + 1
        for member in members:
            await member.expect("webrtc:participant-joined")
        members.append(joiner)
    await all_silent(*members)


async def test_unlocking_lets_everyone_in_again(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group
) -> None:
    a, b = await in_room(ROOM, alice, bob, **of(team))
    await lock(a, [b], True, id="lock")
    joiner = await connect(carol)
    await joiner.send("webrtc:join-room", {"callRoomId": ROOM, **of(team)}, id="j")
    await refused(joiner, "room-locked", "webrtc:join-room", "j")

    await lock(a, [b], False, id="unlock")

    joined = await joiner.join(ROOM, **of(team))
    assert joined["locked"] is False and joined["participantCount"] == 3


async def test_a_lock_ends_with_its_session(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group
) -> None:
    a, b = await in_room(ROOM, alice, bob, **of(team))
    await lock(a, [b], True)
    await b.leave(ROOM)
    await a.expect("webrtc:participant-left")
    await a.leave(ROOM)

    joined = await (await connect(carol)).join(ROOM, **of(team))

    assert joined["locked"] is False and joined["participantCount"] == 1


async def test_a_lock_ends_when_the_call_is_ended(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, team: Group
) -> None:
    a, b = await in_room(ROOM, alice, bob, **of(team))
    await lock(a, [b], True)
    await a.send("webrtc:end-call", {"callRoomId": ROOM}, id="e")
    await next_frames(a, 2)
    await b.expect("webrtc:call-ended")

    joined = await (await connect(carol)).join(ROOM, **of(team))

    assert joined["locked"] is False and joined["participantCount"] == 1


async def test_a_locked_ungrouped_room_lets_only_its_creator_in(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, dave: User, team: Group
) -> None:
    b, d = await in_room("open-call", bob, dave)
    await lock(b, [d], True, room="open-call")

    for user in (alice, carol, dave):  # alice owns a group, which does not matter here
        joiner = await connect(user)
        await joiner.send("webrtc:join-room", {"callRoomId": "open-call"}, id="j")
        await refused(joiner, "room-locked", "webrtc:join-room", "j")
    joined = await (await connect(bob)).join("open-call")
    assert joined["locked"] is True and joined["participantCount"] == 3


async def test_the_creator_of_a_groups_room_who_is_a_plain_member_does_not_pass_its_lock(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, team: Group
) -> None:
    """Tests that in a group's room only staff and the group's owners and admins are
    moderators: a plain member who happened to create the session is not one, so a lock
    keeps his other connections out like anyone else's (docs/protocol.md §10: "in a group's room
    the group's owners and admins; in an ungrouped room the session's creator")."""
    b, a = await in_room(ROOM, bob, alice, **of(team))
    await b.send("webrtc:lock-room", {"callRoomId": ROOM, "locked": True}, id="not-mine")
    await refused(b, "forbidden", "webrtc:lock-room", "not-mine")  # he does not moderate it
    await lock(a, [b], True)

    bob_laptop = await connect(bob)
    await bob_laptop.send("webrtc:join-room", {"callRoomId": ROOM, **of(team)}, id="j")

    await refused(bob_laptop, "room-locked", "webrtc:join-room", "j")
    await all_silent(a, b)


@pytest.mark.parametrize("locked", ["yes", None, 1])
async def test_a_malformed_lock_is_invalid(in_room: InRoom, alice: User, bob: User, team: Group, locked: Any) -> None:
    a, b = await in_room(ROOM, alice, bob, **of(team))
    data = {"callRoomId": ROOM} if locked is None else {"callRoomId": ROOM, "locked": locked}
    await a.send("webrtc:lock-room", data, id="l")
    await refused(a, "invalid-message", "webrtc:lock-room", "l")
    await all_silent(a, b)


# ---------------------------------------------------------------------------
# History
# ---------------------------------------------------------------------------


async def test_kicks_bans_and_locks_are_in_the_call_history(
    in_room: InRoom, alice: User, bob: User, carol: User, team: Group
) -> None:
    a, b, c = await in_room(ROOM, alice, bob, carol, **of(team))
    await lock(a, [b, c], True, id="lock")
    await kick(a, c)
    await kicked_ok(a, c, [b])
    await kick(a, b, banSecs=600, id="ban")
    banned = await kicked_ok(a, b, [], id="ban")
    await lock(a, [], False, id="unlock")

    await history_written()

    session = await CallRoom.objects.aget(room_id=ROOM)
    actions = [
        (row.action, row.actor_id, row.target_user_id, row.target_socket_id, row.banned_until)
        async for row in ModerationAction.objects.filter(call=session).order_by("at", "id")
    ]
    assert actions == [
        ("lock", alice.pk, None, "", None),
        ("kick", alice.pk, carol.pk, c.socket_id, None),
        ("ban", alice.pk, bob.pk, b.socket_id, utc(banned["bannedUntil"])),
        ("unlock", alice.pk, None, "", None),
    ]
    stays = {
        row.socket_id: (row.leave_reason, row.left_at is not None)
        async for row in CallParticipant.objects.filter(call=session)
    }
    assert stays == {a.socket_id: ("", False), b.socket_id: ("kicked", True), c.socket_id: ("kicked", True)}
