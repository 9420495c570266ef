"""Tests that joining, switching and leaving rooms follow docs/protocol.md §4 and §5 rules 1 to 4."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from typing import Any

import pytest
from channels.db import database_sync_to_async

from accounts.models import User
from calls import process
from calls.models import CallRoom
from groups.models import Group, Membership
from tests.calls.conftest import InRoom, all_silent, socket_ids
from tests.conftest import Client, ConnectFactory, history_written

pytestmark = pytest.mark.django_db(transaction=True)

PARTICIPANT_KEYS = {"socketId", "userId", "username", "displayName", "joinedAt", "media"}
ROOM_JOINED_KEYS = {
    "callRoomId",
    "participantCount",
    "existingParticipants",
    "participant",
    "metadata",
    "iceServers",
    "locked",
}


@pytest.fixture
def outsiders(dave: User) -> Group:
    """A chat group of dave only: alice, bob and carol are not in it."""
    group = Group.objects.create(name="Outsiders")
    Membership.objects.create(group=group, user=dave, role=Membership.Role.OWNER)
    return group


def assert_recent_utc(value: str) -> None:
    """``value`` is an ISO 8601 UTC timestamp of the last minute."""
    moment = dt.datetime.fromisoformat(value)
    assert moment.utcoffset() == dt.timedelta(0), value
    assert abs(dt.datetime.now(dt.UTC) - moment) < dt.timedelta(minutes=1), value


def assert_participant(participant: dict[str, Any], client: Client, user: User) -> None:
    """``participant`` is the participant object of ``client``, connected as ``user``."""
    assert participant.keys() == PARTICIPANT_KEYS
    assert participant["socketId"] == client.socket_id
    assert participant["userId"] == str(user.pk) == client.user_id
    assert participant["username"] == user.username
    assert participant["displayName"] == user.display_name
    assert_recent_utc(participant["joinedAt"])


async def joined_amid_announcements(client: Client, room: str) -> dict[str, Any]:
    """Join and return the ``room-joined`` data, skipping announcements of concurrent joins."""
    await client.send("webrtc:join-room", {"callRoomId": room})
    while True:
        frame = await client.receive()
        if frame["event"] == "webrtc:room-joined":
            return frame["data"]
        assert frame["event"] == "webrtc:participant-joined", frame


# ---------------------------------------------------------------------------
# Creating a room and its metadata
# ---------------------------------------------------------------------------


async def test_the_first_join_creates_the_room_with_the_joiner_alone(connect: ConnectFactory, alice: User) -> None:
    """Tests that room-joined describes a new room whose only participant is the joiner."""
    client = await connect(alice)

    joined = await client.join("standup")

    assert joined.keys() == ROOM_JOINED_KEYS
    assert joined["callRoomId"] == "standup"
    assert joined["participantCount"] == 1
    assert joined["existingParticipants"] == []
    assert_participant(joined["participant"], client, alice)
    assert joined["metadata"].keys() == {"callType", "createdAt", "createdBy"}
    assert joined["metadata"]["callType"] == "video"
    assert joined["metadata"]["createdBy"] == str(alice.pk)
    assert_recent_utc(joined["metadata"]["createdAt"])
    await client.expect_silence()


async def test_the_creators_metadata_is_kept_and_the_server_keys_win(connect: ConnectFactory, alice: User) -> None:
    client = await connect(alice)
    creator_metadata = {
        "topic": "retro",
        "nested": {"tags": ["a", "b"], "n": 1},
        "callType": "screen",
        "createdAt": "1999-01-01T00:00:00Z",
        "createdBy": "mallory",
    }

    joined = await client.join("retro", callType="audio", metadata=creator_metadata)

    metadata = joined["metadata"]
    assert metadata.keys() == creator_metadata.keys()
    assert metadata["topic"] == "retro"
    assert metadata["nested"] == {"tags": ["a", "b"], "n": 1}
    assert metadata["callType"] == "audio"
    assert metadata["createdBy"] == str(alice.pk)
    assert_recent_utc(metadata["createdAt"])


async def test_a_later_joiners_call_type_and_metadata_are_ignored(
    connect: ConnectFactory, alice: User, bob: User
) -> None:
    creator = await connect(alice)
    created = await creator.join("r", callType="audio", metadata={"topic": "planning"})
    joiner = await connect(bob)

    joined = await joiner.join("r", callType="video", metadata={"topic": "hijacked", "extra": True})

    assert joined["metadata"] == created["metadata"]
    assert joined["metadata"]["callType"] == "audio"


async def test_a_join_naming_a_group_goes_to_the_groups_room_not_to_an_open_room_of_that_id(
    connect: ConnectFactory, alice: User, dave: User, team: Group
) -> None:
    """Tests that an open room of the same id, made first by someone else, is another room."""
    creator = await connect(dave)
    created = await creator.join("open-room")
    joiner = await connect(alice)

    joined = await joiner.join("open-room", metadata={"groupId": team.pk})

    assert joined["participantCount"] == 1
    assert joined["metadata"]["groupId"] == str(team.pk)
    assert "groupId" not in created["metadata"]
    await creator.expect_silence()


async def test_a_squatter_outside_the_group_never_reaches_nor_fills_the_groups_call(
    settings: Any, connect: ConnectFactory, alice: User, bob: User, dave: User, team: Group
) -> None:
    """Tests the squatting sequence: a user in no group takes ``group-N`` first, without a
    groupId, and fills it; the members then join with the groupId as the call page does."""
    settings.CALLS_MAX_PARTICIPANTS = 2
    room = f"group-{team.pk}"
    squatters = [await connect(dave), await connect(dave)]
    for squatter in squatters:
        await squatter.join(room)
    first, second = await connect(alice), await connect(bob)

    await first.join(room, metadata={"groupId": team.pk})
    joined = await second.join(room, metadata={"groupId": team.pk})
    await first.expect("webrtc:participant-joined")
    await second.send(
        "webrtc:offer",
        {"callRoomId": room, "targetSocketId": first.socket_id, "offer": {"type": "offer", "sdp": "v=0"}},
    )
    await second.send(
        "webrtc:ice-candidate", {"callRoomId": room, "candidate": "candidate:1 1 udp 1 10.0.0.1 9 typ host"}
    )

    assert socket_ids(joined["existingParticipants"]) == [first.socket_id]
    assert (await first.expect("webrtc:offer"))["data"]["fromSocketId"] == second.socket_id
    assert (await first.expect("webrtc:ice-candidate"))["data"]["fromSocketId"] == second.socket_id
    await squatters[0].expect("webrtc:participant-joined")  # its own room's second squatter
    await all_silent(*squatters)
    # Nor can the squatter address the group's participants from his room.
    await squatters[0].send(
        "webrtc:offer",
        {"callRoomId": room, "targetSocketId": first.socket_id, "offer": {"type": "offer", "sdp": "v=0"}},
    )
    await squatters[0].expect_error("participant-not-found")
    await all_silent(first, second)


async def test_a_member_of_another_group_cannot_take_a_groups_room_id(
    connect: ConnectFactory, alice: User, bob: User, dave: User, team: Group
) -> None:
    """Tests that linking ``group-N`` to one's own group leaves group N's call free."""
    other = await Group.objects.acreate(name="Other")
    await Membership.objects.acreate(group=other, user=dave)
    room = f"group-{team.pk}"
    squatter = await connect(dave)
    await squatter.join(room, metadata={"groupId": other.pk})

    joined = await (await connect(alice)).join(room, metadata={"groupId": team.pk})
    again = await (await connect(bob)).join(room, metadata={"groupId": team.pk})

    assert joined["participantCount"] == 1
    assert again["participantCount"] == 2
    await squatter.expect_silence()


# ---------------------------------------------------------------------------
# Who is told what
# ---------------------------------------------------------------------------


async def test_everyone_else_is_told_of_a_join_but_not_the_joiner(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User
) -> None:
    first, second = await in_room("r", alice, bob)
    joiner = await connect(carol)

    joined = await joiner.join("r")

    for other in (first, second):
        announced = await other.expect("webrtc:participant-joined")
        assert announced["data"] == {"callRoomId": "r", "participant": joined["participant"]}
    await all_silent(first, second, joiner)


async def test_existing_participants_are_listed_oldest_first(
    connect: ConnectFactory, alice: User, bob: User, carol: User, dave: User
) -> None:
    clients: list[Client] = []
    participants: list[dict[str, Any]] = []
    for user in (alice, bob, carol, dave):
        client = await connect(user)
        joined = await client.join("r")
        for earlier in clients:
            announced = await earlier.expect("webrtc:participant-joined")
            assert announced["data"]["participant"] == joined["participant"]
        assert joined["existingParticipants"] == participants
        assert joined["participantCount"] == len(participants) + 1
        clients.append(client)
        participants.append(joined["participant"])

    assert socket_ids(participants) == [client.socket_id for client in clients]


async def test_the_same_user_on_two_connections_is_two_participants(connect: ConnectFactory, alice: User) -> None:
    phone, laptop = await connect(alice), await connect(alice)
    await phone.join("r")

    joined = await laptop.join("r")

    assert joined["participantCount"] == 2
    assert socket_ids(joined["existingParticipants"]) == [phone.socket_id]
    assert joined["existingParticipants"][0]["userId"] == joined["participant"]["userId"] == str(alice.pk)
    assert phone.socket_id != laptop.socket_id
    announced = await phone.expect("webrtc:participant-joined")
    assert announced["data"]["participant"]["socketId"] == laptop.socket_id

    await phone.send("webrtc:ice-candidate", {"callRoomId": "r", "targetSocketId": laptop.socket_id, "candidate": ""})
    relayed = await laptop.expect("webrtc:ice-candidate")
    assert relayed["data"]["fromSocketId"] == phone.socket_id


# ---------------------------------------------------------------------------
# One room per connection
# ---------------------------------------------------------------------------


async def test_joining_another_room_leaves_the_current_one_as_switched_room(
    in_room: InRoom, alice: User, bob: User, carol: User
) -> None:
    mover, stayer = await in_room("first", alice, bob)
    (host,) = await in_room("second", carol)

    joined = await mover.join("second")

    assert joined["participantCount"] == 2
    assert socket_ids(joined["existingParticipants"]) == [host.socket_id]
    left = await stayer.expect("webrtc:participant-left")
    assert left["data"]["callRoomId"] == "first"
    assert left["data"]["reason"] == "switched-room"
    assert left["data"]["participant"]["socketId"] == mover.socket_id
    announced = await host.expect("webrtc:participant-joined")
    assert announced["data"] == {"callRoomId": "second", "participant": joined["participant"]}
    await all_silent(mover, stayer, host)


async def test_the_old_room_no_longer_receives_relays_from_a_switcher(
    in_room: InRoom, alice: User, bob: User, carol: User
) -> None:
    mover, stayer = await in_room("first", alice, bob)
    (host,) = await in_room("second", carol)
    await mover.join("second")
    await stayer.expect("webrtc:participant-left")
    await host.expect("webrtc:participant-joined")

    await mover.send("webrtc:ice-candidate", {"callRoomId": "first", "candidate": "x"})
    await mover.expect_error("not-in-room", event="webrtc:ice-candidate")
    await mover.send("webrtc:ice-candidate", {"callRoomId": "second", "candidate": "y"})

    assert (await host.expect("webrtc:ice-candidate"))["data"]["candidate"] == "y"
    await all_silent(mover, stayer, host)


async def test_joining_the_room_you_are_in_again_answers_room_joined_and_announces_nothing(
    connect: ConnectFactory, alice: User, bob: User, carol: User
) -> None:
    first, second = await connect(alice), await connect(bob)
    created = await first.join("r", callType="audio")
    await second.join("r")
    await first.expect("webrtc:participant-joined")

    again = await first.join("r", callType="video", metadata={"topic": "ignored"})

    assert again["participant"] == created["participant"]
    assert again["participantCount"] == 2
    assert socket_ids(again["existingParticipants"]) == [second.socket_id]
    assert again["metadata"] == created["metadata"]
    await all_silent(first, second)
    joiner = await connect(carol)
    assert socket_ids((await joiner.join("r"))["existingParticipants"]) == [first.socket_id, second.socket_id]


# ---------------------------------------------------------------------------
# Rooms linked to a group
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("as_string", [False, True], ids=["integer", "numeric string"])
async def test_a_group_room_returns_its_group_id_as_a_string(
    connect: ConnectFactory, alice: User, team: Group, as_string: bool
) -> None:
    client = await connect(alice)

    joined = await client.join("team-call", metadata={"groupId": str(team.pk) if as_string else team.pk})

    assert joined["metadata"]["groupId"] == str(team.pk)


async def test_a_group_room_admits_the_groups_members(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, team: Group
) -> None:
    (creator,) = await in_room("team-call", alice, metadata={"groupId": team.pk})
    member = await connect(bob)

    joined = await member.join("team-call", metadata={"groupId": team.pk})

    assert joined["participantCount"] == 2
    assert joined["metadata"]["groupId"] == str(team.pk)
    await creator.expect("webrtc:participant-joined")


async def test_a_group_room_refuses_a_non_member_and_changes_nothing(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, dave: User, team: Group
) -> None:
    first, second = await in_room("team-call", alice, bob, metadata={"groupId": team.pk})
    outsider = await connect(dave)

    await outsider.send("webrtc:join-room", {"callRoomId": "team-call", "metadata": {"groupId": team.pk}})

    await outsider.expect_error("forbidden", event="webrtc:join-room")
    await all_silent(first, second, outsider)
    joined = await (await connect(carol)).join("team-call", metadata={"groupId": team.pk})
    assert socket_ids(joined["existingParticipants"]) == [first.socket_id, second.socket_id]


@pytest.mark.parametrize("group", ["not the creator's", "nonexistent"])
async def test_creating_a_room_for_a_group_the_creator_is_not_in_is_forbidden(
    connect: ConnectFactory, alice: User, bob: User, outsiders: Group, group: str
) -> None:
    group_id = outsiders.pk if group == "not the creator's" else outsiders.pk + 1000
    creator = await connect(alice)

    await creator.send("webrtc:join-room", {"callRoomId": "r", "metadata": {"groupId": group_id}})

    await creator.expect_error("forbidden", event="webrtc:join-room")
    joined = await (await connect(bob)).join("r")
    assert joined["participantCount"] == 1
    assert "groupId" not in joined["metadata"]


# ---------------------------------------------------------------------------
# Capacity
# ---------------------------------------------------------------------------


async def test_a_full_room_answers_room_full_and_changes_nothing(
    settings: Any, in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User
) -> None:
    settings.CALLS_MAX_PARTICIPANTS = 2
    first, second = await in_room("r", alice, bob)
    latecomer = await connect(carol)

    await latecomer.send("webrtc:join-room", {"callRoomId": "r"})

    await latecomer.expect_error("room-full", event="webrtc:join-room")
    await all_silent(first, second, latecomer)
    await second.leave("r")
    await first.expect("webrtc:participant-left")
    joined = await latecomer.join("r")
    assert socket_ids(joined["existingParticipants"]) == [first.socket_id]


@pytest.mark.parametrize("refusal", ["forbidden", "room-full"])
async def test_a_refused_join_leaves_the_joiners_current_room_untouched(
    settings: Any,
    in_room: InRoom,
    alice: User,
    bob: User,
    carol: User,
    dave: User,
    team: Group,
    refusal: str,
) -> None:
    if refusal == "room-full":
        settings.CALLS_MAX_PARTICIPANTS = 2
        target = await in_room("target", alice, bob)
    else:
        target = await in_room("target", alice, metadata={"groupId": team.pk})
    mover, stayer = await in_room("lobby", dave, carol)

    join = (
        {"callRoomId": "target"}
        if refusal == "room-full"
        else {"callRoomId": "target", "metadata": {"groupId": team.pk}}
    )
    await mover.send("webrtc:join-room", join)

    await mover.expect_error(refusal, event="webrtc:join-room")
    await all_silent(mover, stayer, *target)
    await mover.send("webrtc:ice-candidate", {"callRoomId": "lobby", "candidate": "still here"})
    assert (await stayer.expect("webrtc:ice-candidate"))["data"]["fromSocketId"] == mover.socket_id


# ---------------------------------------------------------------------------
# Leaving and disconnecting
# ---------------------------------------------------------------------------


async def test_leaving_answers_room_left_and_tells_the_others(
    in_room: InRoom, alice: User, bob: User, carol: User
) -> None:
    leaver, *others = await in_room("r", alice, bob, carol)

    assert await leaver.leave("r") == {"callRoomId": "r"}

    for other in others:
        left = await other.expect("webrtc:participant-left")
        assert left["data"].keys() == {"callRoomId", "participant", "reason"}
        assert left["data"]["callRoomId"] == "r"
        assert left["data"]["reason"] == "left"
        assert_participant(left["data"]["participant"], leaver, alice)
    await all_silent(leaver, *others)


@pytest.mark.parametrize("where", ["in no room", "in another room"])
@pytest.mark.parametrize("room", ["nonexistent", "occupied"])
async def test_leaving_a_room_you_are_not_in_is_not_in_room(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, where: str, room: str
) -> None:
    (occupant,) = await in_room("occupied", bob)
    leaver = await connect(alice)
    if where == "in another room":
        await leaver.join("elsewhere")

    await leaver.send("webrtc:leave-room", {"callRoomId": room})

    await leaver.expect_error("not-in-room", event="webrtc:leave-room")
    await all_silent(leaver, occupant)
    if where == "in another room":
        assert (await leaver.join("elsewhere"))["participantCount"] == 1  # still there


@pytest.mark.parametrize("code", [1000, 1001, 4000])
async def test_closing_the_socket_leaves_the_room_as_disconnected(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, code: int
) -> None:
    closer, stayer = await in_room("r", alice, bob)

    await closer.communicator.disconnect(code=code)

    left = await stayer.expect("webrtc:participant-left")
    assert left["data"]["reason"] == "disconnected"
    assert left["data"]["participant"]["socketId"] == closer.socket_id
    joined = await (await connect(carol)).join("r")
    assert socket_ids(joined["existingParticipants"]) == [stayer.socket_id]


# ---------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------


async def test_concurrent_first_joins_create_one_room_counted_one_to_n(
    connect: ConnectFactory, alice: User, bob: User, carol: User, dave: User
) -> None:
    clients = [await connect(user) for user in (alice, bob, carol, dave, alice)]

    joins = await asyncio.gather(*(joined_amid_announcements(client, "rush") for client in clients))

    assert sorted(joined["participantCount"] for joined in joins) == [1, 2, 3, 4, 5]
    assert len({repr(sorted(joined["metadata"].items())) for joined in joins}) == 1
    await history_written()
    assert await CallRoom.objects.filter(room_id="rush").acount() == 1


async def test_after_the_last_leave_the_room_id_starts_a_new_session(
    connect: ConnectFactory, alice: User, bob: User
) -> None:
    first = await connect(alice)
    before = await first.join("r", callType="audio", metadata={"topic": "first"})
    await first.leave("r")
    second = await connect(bob)

    after = await second.join("r", metadata={"topic": "second"})

    assert after["participantCount"] == 1
    assert after["existingParticipants"] == []
    assert after["metadata"]["callType"] == "video"
    assert after["metadata"]["topic"] == "second"
    assert after["metadata"]["createdBy"] == str(bob.pk)
    assert after["metadata"]["createdAt"] >= before["metadata"]["createdAt"]
    await history_written()
    sessions = await database_sync_to_async(list)(CallRoom.objects.filter(room_id="r").order_by("pk"))
    assert [session.created_by_id for session in sessions] == [alice.pk, bob.pk]
    assert sessions[0].ended_at is not None
    assert sessions[1].ended_at is None
    assert sessions[0].session_id != sessions[1].session_id


async def test_a_group_join_never_waits_for_a_history_backlog(
    connect: ConnectFactory, alice: User, team: Group
) -> None:
    """Tests that the joiner's group lookup does not queue behind a stuck history writer."""
    await history_written()
    released = threading.Event()
    process.current().writer.submit(lambda: released.wait(10))  # the database is stuck
    joiner = await connect(alice)
    try:
        joined = await asyncio.wait_for(joiner.join("team-call", metadata={"groupId": team.pk}), timeout=2.0)
    finally:
        released.set()
    assert joined["metadata"]["groupId"] == str(team.pk)
