"""Tests that call sessions and their participants are recorded, closed and shown read-only in the admin."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client as HttpClient
from django.utils import timezone

from accounts.models import User
from calls import history
from calls.models import CallParticipant, CallRoom
from calls.presence.base import Participant, RoomSession
from groups.models import Group
from tests.calls.conftest import InRoom
from tests.conftest import Client, ConnectFactory, history_written, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


async def participants_of(room_id: str) -> list[CallParticipant]:
    await history_written()
    """The participant rows of every session of ``room_id``, in join order."""
    return await database_sync_to_async(list)(CallParticipant.objects.filter(call__room_id=room_id))


def make_call(
    room_id: str,
    *,
    creator: User,
    call_type: str = "video",
    ended: bool = False,
    stays: tuple[tuple[User, str], ...] = (),
) -> CallRoom:
    """A session row as the signaling server writes it; ``stays`` are (user, leave_reason)
    pairs, with ``""`` for a participant still in the call."""
    now = timezone.now()
    started_at = now - dt.timedelta(minutes=10)
    call = CallRoom.objects.create(
        session_id=uuid.uuid4().hex,
        room_id=room_id,
        call_type=call_type,
        created_by=creator,
        metadata={"callType": call_type, "createdBy": str(creator.pk)},
        started_at=started_at,
        ended_at=now if ended else None,
        peak_participants=len(stays),
    )
    for index, (user, reason) in enumerate(stays):
        CallParticipant.objects.create(
            call=call,
            user=user,
            socket_id=f"{room_id}-socket-{index}",
            joined_at=started_at,
            left_at=now if reason else None,
            leave_reason=reason,
        )
    return call


# ---------------------------------------------------------------------------
# Sessions and participants recorded by joins and leaves
# ---------------------------------------------------------------------------


async def test_the_first_join_records_a_session_with_the_rooms_metadata(
    connect: ConnectFactory, alice: User, team: Group
) -> None:
    client = await connect(alice)

    joined = await client.join("standup", callType="audio", metadata={"topic": "daily", "groupId": team.pk})

    await history_written()
    call = await CallRoom.objects.aget(room_id="standup")
    assert call.session_id
    assert call.call_type == "audio"
    assert call.group_id == team.pk
    assert call.created_by_id == alice.pk
    assert call.metadata == joined["metadata"]
    assert call.started_at == parse_time(joined["metadata"]["createdAt"])
    assert call.ended_at is None
    assert call.peak_participants == 1


async def test_each_join_records_a_participant_row(connect: ConnectFactory, alice: User, bob: User) -> None:
    clients = [await connect(alice), await connect(bob), await connect(alice)]
    joins = [await client.join("r") for client in clients]

    rows = await participants_of("r")

    assert [row.socket_id for row in rows] == [client.socket_id for client in clients]
    assert [row.user_id for row in rows] == [alice.pk, bob.pk, alice.pk]
    assert [row.joined_at for row in rows] == [parse_time(joined["participant"]["joinedAt"]) for joined in joins]
    assert all(row.left_at is None and row.leave_reason == "" for row in rows)
    await history_written()
    assert (await CallRoom.objects.aget(room_id="r")).peak_participants == 3


async def test_a_join_to_the_room_you_are_in_records_nothing(connect: ConnectFactory, alice: User) -> None:
    client = await connect(alice)
    await client.join("r")

    await client.join("r")

    assert len(await participants_of("r")) == 1
    await history_written()
    assert await CallRoom.objects.acount() == 1


async def test_a_refused_join_records_nothing(
    in_room: InRoom, connect: ConnectFactory, alice: User, dave: User, team: Group
) -> None:
    await in_room("team-call", alice, metadata={"groupId": team.pk})
    outsider = await connect(dave)

    await outsider.send("webrtc:join-room", {"callRoomId": "team-call", "metadata": {"groupId": team.pk}})
    await outsider.expect_error("forbidden")
    await outsider.send("webrtc:join-room", {"callRoomId": "own-call", "metadata": {"groupId": team.pk}})
    await outsider.expect_error("forbidden")

    assert [row.user_id for row in await participants_of("team-call")] == [alice.pk]
    assert not await CallRoom.objects.filter(room_id="own-call").aexists()


async def depart(client: Client, how: str) -> None:
    """Make ``client`` leave room "r" the way ``how`` names."""
    if how == "left":
        await client.leave("r")
    elif how == "disconnected":
        await client.close()
    else:
        await client.join("elsewhere")


@pytest.mark.parametrize("reason", ["left", "disconnected", "switched-room"])
async def test_a_departure_records_when_and_why_the_participant_left(
    in_room: InRoom, alice: User, bob: User, reason: str
) -> None:
    leaver, stayer = await in_room("r", alice, bob)

    await depart(leaver, reason)
    await stayer.expect("webrtc:participant-left")  # sent once the departure is recorded

    rows = {row.socket_id: row for row in await participants_of("r")}
    assert rows[leaver.socket_id].leave_reason == reason
    assert rows[leaver.socket_id].left_at is not None
    assert rows[leaver.socket_id].left_at >= rows[leaver.socket_id].joined_at
    assert rows[stayer.socket_id].left_at is None
    await history_written()
    assert (await CallRoom.objects.aget(room_id="r")).ended_at is None


async def test_switching_rooms_records_the_stay_in_the_new_room(in_room: InRoom, alice: User) -> None:
    (mover,) = await in_room("r", alice)

    await mover.join("elsewhere")

    await history_written()
    old = await CallRoom.objects.aget(room_id="r")
    assert old.ended_at is not None  # the switch emptied it
    assert [row.socket_id for row in await participants_of("elsewhere")] == [mover.socket_id]


async def test_the_last_departure_ends_the_session_with_its_duration_and_peak(
    in_room: InRoom, alice: User, bob: User, carol: User
) -> None:
    first, second, third = await in_room("r", alice, bob, carol)
    await third.leave("r")
    await first.expect("webrtc:participant-left")
    await first.leave("r")
    await second.expect("webrtc:participant-left")
    await second.expect("webrtc:participant-left")
    await history_written()
    assert (await CallRoom.objects.aget(room_id="r")).ended_at is None

    await second.leave("r")

    await history_written()
    call = await CallRoom.objects.aget(room_id="r")
    assert call.ended_at is not None
    assert call.duration == call.ended_at - call.started_at >= dt.timedelta(0)
    assert call.peak_participants == 3
    assert {row.leave_reason for row in await participants_of("r")} == {"left"}


async def test_relayed_messages_are_counted_when_their_sender_leaves(in_room: InRoom, alice: User, bob: User) -> None:
    caller, callee = await in_room("r", alice, bob)
    await caller.send(
        "webrtc:offer", {"callRoomId": "r", "targetSocketId": callee.socket_id, "offer": {"type": "offer", "sdp": ""}}
    )
    await callee.expect("webrtc:offer")
    await callee.send(
        "webrtc:answer",
        {"callRoomId": "r", "targetSocketId": caller.socket_id, "answer": {"type": "answer", "sdp": ""}},
    )
    await caller.expect("webrtc:answer")
    for _ in range(2):
        await caller.send(
            "webrtc:ice-candidate", {"callRoomId": "r", "targetSocketId": callee.socket_id, "candidate": ""}
        )
        await callee.expect("webrtc:ice-candidate")
    await callee.send("webrtc:ice-candidate", {"callRoomId": "r", "candidate": ""})
    await caller.expect("webrtc:ice-candidate")

    await caller.leave("r")
    await history_written()
    assert (await CallRoom.objects.aget(room_id="r")).offers_relayed == 1
    await callee.close()

    await history_written()
    call = await CallRoom.objects.aget(room_id="r")
    assert (call.offers_relayed, call.answers_relayed, call.candidates_relayed) == (1, 1, 3)


# ---------------------------------------------------------------------------
# A batch of writes in which one fails
# ---------------------------------------------------------------------------

HOLD_TIMEOUT_SECS = 10.0


def join_write(user: User, room_id: str) -> dict[str, Any]:
    """The arguments of ``history.record_join`` for ``user`` starting a call in ``room_id``."""
    now = timezone.now().isoformat()
    session = RoomSession(
        room_id=room_id,
        session_id=uuid.uuid4().hex,
        metadata={"callType": "audio", "createdBy": str(user.pk), "createdAt": now},
    )
    participant = Participant(
        socket_id=f"{room_id}-socket", user_id=str(user.pk), username=user.username, display_name="", joined_at=now
    )
    return {"session": session, "participant": participant, "member_count": 1}


def delete_user(pk: int) -> None:
    """Delete a user from a thread and connection of its own, as an operator would."""
    try:
        User.objects.filter(pk=pk).delete()
    finally:
        connection.close()


async def test_a_user_deleted_while_their_writes_are_queued_loses_only_their_writes(
    alice: User, bob: User, dave: User, caplog: pytest.LogCaptureFixture
) -> None:
    """Tests that the writes of a user deleted while they wait in the writer's queue fail
    alone, and the rest of their batch is recorded: on PostgreSQL, foreign keys are
    checked at COMMIT unless made immediate, which would fail the whole batch."""
    started, release = threading.Event(), threading.Event()

    def hold_the_database_thread() -> None:
        started.set()
        release.wait(HOLD_TIMEOUT_SECS)

    # database_sync_to_async runs every call in one thread: the writer's batch waits
    # behind this one, already taken from the queue, while dave is deleted.
    holder = asyncio.ensure_future(database_sync_to_async(hold_the_database_thread)())
    assert await asyncio.to_thread(started.wait, HOLD_TIMEOUT_SECS)
    for user in (alice, dave, bob):
        history.writer().submit(history.record_join, **join_write(user, f"{user.username}-room"))
    await asyncio.sleep(0)  # the writer takes the three writes as one batch
    await asyncio.to_thread(delete_user, dave.pk)
    release.set()
    await holder
    with caplog.at_level(logging.WARNING, logger="calls"):
        await history_written()

    participants = CallParticipant.objects.values_list("call__room_id", "user_id")
    assert {row async for row in participants} == {("alice-room", alice.pk), ("bob-room", bob.pk)}
    assert {room async for room in CallRoom.objects.values_list("room_id", flat=True)} == {"alice-room", "bob-room"}
    # PostgreSQL checks the key at the write, in its savepoint; SQLite only at COMMIT.
    retried = ["a batch of 3 call history writes failed at COMMIT: writing them one by one"]
    lost = "could not record call history: lost record_join room=dave-room session="
    expected = [*(retried if connection.vendor == "sqlite" else []), lost]
    messages = [record.getMessage() for record in caplog.records]
    assert [
        message.split("session=")[0] + ("session=" if "session=" in message else "") for message in messages
    ] == expected
    assert f"socketId=dave-room-socket userId={dave.pk}" in messages[-1]


# ---------------------------------------------------------------------------
# Sessions left open by a previous run
# ---------------------------------------------------------------------------


def test_closing_orphaned_sessions_ends_them_and_marks_their_participants_lost(alice: User, bob: User) -> None:
    orphan = make_call("orphan", creator=alice, stays=((alice, ""), (bob, "left")))
    finished = make_call("finished", creator=bob, ended=True, stays=((bob, "disconnected"),))
    finished_end = finished.ended_at

    assert history.close_orphaned_sessions() == 1

    orphan.refresh_from_db()
    finished.refresh_from_db()
    assert orphan.ended_at is not None
    assert finished.ended_at == finished_end
    reasons = {(row.call.room_id, row.user_id): row.leave_reason for row in CallParticipant.objects.all()}
    assert reasons == {("orphan", alice.pk): "lost", ("orphan", bob.pk): "left", ("finished", bob.pk): "disconnected"}
    assert CallParticipant.objects.filter(left_at__isnull=True).count() == 0


async def test_server_start_up_closes_sessions_left_open_by_a_previous_run(alice: User) -> None:
    from config.asgi import application

    orphan = await database_sync_to_async(make_call)("orphan", creator=alice, stays=((alice, ""),))
    application.started = False

    await application.startup()

    assert application.started
    await history_written()
    assert (await CallRoom.objects.aget(pk=orphan.pk)).ended_at is not None
    await history_written()
    assert (await CallParticipant.objects.aget(call=orphan)).leave_reason == "lost"


async def test_start_up_keeps_the_sessions_presence_shows_live(connect: ConnectFactory, alice: User) -> None:
    from config.asgi import application

    client = await connect(alice)
    await client.join("still-on")
    orphan = await database_sync_to_async(make_call)("orphan", creator=alice, stays=((alice, ""),))
    application.started = False

    await application.startup()

    await history_written()
    assert (await CallRoom.objects.aget(room_id="still-on")).ended_at is None
    await history_written()
    assert (await CallRoom.objects.aget(pk=orphan.pk)).ended_at is not None


async def test_the_first_connection_after_start_runs_the_start_up(connect: ConnectFactory, alice: User) -> None:
    from config.asgi import application

    orphan = await database_sync_to_async(make_call)("orphan", creator=alice, stays=((alice, ""),))
    application.started = False

    await connect(alice)

    assert application.started
    await history_written()
    assert (await CallRoom.objects.aget(pk=orphan.pk)).ended_at is not None


# ---------------------------------------------------------------------------
# The admin: a read-only audit for operators
# ---------------------------------------------------------------------------


@pytest.fixture
def operator(db: None) -> User:
    """A staff user allowed to view call history, and nothing more."""
    user = make_user("operator")
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    user.user_permissions.add(
        *Permission.objects.filter(
            codename__in=["view_callroom", "view_callparticipant"], content_type__app_label="calls"
        )
    )
    return user


@pytest.fixture
def admin_client_of_operator(client: HttpClient, operator: User) -> HttpClient:
    client.force_login(operator)
    return client


@pytest.fixture
def calls(alice: User, bob: User) -> dict[str, CallRoom]:
    """A live video call started by alice, and an ended audio call of bob alone."""
    return {
        "live": make_call("standup-room", creator=alice, stays=((alice, ""), (bob, "left"))),
        "ended": make_call("retro-room", creator=bob, call_type="audio", ended=True, stays=((bob, "left"),)),
    }


@pytest.mark.parametrize(
    ("query", "shown", "hidden"),
    [
        ("", {"standup-room", "retro-room"}, set()),
        ("?state=live", {"standup-room"}, {"retro-room"}),
        ("?state=ended", {"retro-room"}, {"standup-room"}),
        ("?call_type=audio", {"retro-room"}, {"standup-room"}),
        ("?q=alice", {"standup-room"}, {"retro-room"}),
        ("?q=retro", {"retro-room"}, {"standup-room"}),
    ],
    ids=["all", "live", "ended", "audio", "search by user", "search by room"],
)
def test_the_admin_changelist_lists_filters_and_searches_sessions(
    admin_client_of_operator: HttpClient, calls: dict[str, CallRoom], query: str, shown: set[str], hidden: set[str]
) -> None:
    response = admin_client_of_operator.get(f"/admin/calls/callroom/{query}")

    assert response.status_code == 200
    content = response.content.decode()
    for room_id in shown:
        assert room_id in content
    for room_id in hidden:
        assert room_id not in content


def test_the_admin_change_page_shows_a_session_with_its_participants(
    admin_client_of_operator: HttpClient, calls: dict[str, CallRoom]
) -> None:
    call = calls["live"]

    response = admin_client_of_operator.get(f"/admin/calls/callroom/{call.pk}/change/")

    assert response.status_code == 200
    content = response.content.decode()
    for participant in call.participants.all():
        assert participant.socket_id in content
    assert "standup-room" in content


@pytest.mark.parametrize("page", ["add/", "{pk}/delete/"])
def test_the_admin_is_read_only(admin_client_of_operator: HttpClient, calls: dict[str, CallRoom], page: str) -> None:
    response = admin_client_of_operator.get("/admin/calls/callroom/" + page.format(pk=calls["live"].pk))

    assert response.status_code == 403


def test_the_admin_refuses_to_change_a_session(
    admin_client_of_operator: HttpClient, calls: dict[str, CallRoom]
) -> None:
    call = calls["live"]

    response = admin_client_of_operator.post(f"/admin/calls/callroom/{call.pk}/change/", {"room_id": "renamed"})

    assert response.status_code == 403
    call.refresh_from_db()
    assert call.room_id == "standup-room"
