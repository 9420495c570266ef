"""Tests that the Django signals of ``calls.signals`` are sent once each, after their
history row exists: a call's start and end, joins and leaves, a missed ring."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings

from accounts.models import User
from calls import signals
from calls.models import CallParticipant, CallRing, CallRoom
from calls.services import ringing
from groups.models import Group
from tests.calls.conftest import InRoom
from tests.conftest import ConnectFactory, history_written

pytestmark = pytest.mark.django_db(transaction=True)

ALL = ("call_started", "call_ended", "participant_joined", "participant_left", "ring_missed")


@pytest.fixture
def received() -> Iterator[list[tuple[str, Any]]]:
    """Every signal sent while the test runs, as (name, what the receiver read back)."""
    seen: list[tuple[str, Any]] = []
    receivers = []
    for name in ALL:

        def receiver(sender: type, *, _name: str = name, **kwargs: Any) -> None:
            (row,) = (value for key, value in kwargs.items() if key != "signal")
            # The row is committed: a fresh query on this thread's connection finds it.
            assert type(row).objects.filter(pk=row.pk).exists(), (_name, connection.in_atomic_block)
            seen.append((_name, row))

        getattr(signals, name).connect(receiver)
        receivers.append((name, receiver))
    yield seen
    for name, receiver in receivers:
        getattr(signals, name).disconnect(receiver)


def names(received: list[tuple[str, Any]]) -> list[str]:
    return [name for name, _ in received]


async def test_a_call_tells_its_start_joins_leaves_and_end_once(
    in_room: InRoom, alice: User, bob: User, received: list[tuple[str, Any]]
) -> None:
    a, b = await in_room("signalled", alice, bob)
    await history_written()
    assert names(received) == ["call_started", "participant_joined", "participant_joined"]
    call = received[0][1]
    assert isinstance(call, CallRoom) and call.room_id == "signalled"
    assert [row.user_id for _, row in received[1:]] == [alice.pk, bob.pk]

    await b.leave("signalled")
    await a.expect("webrtc:participant-left")
    await a.leave("signalled")
    await history_written()
    assert names(received)[3:] == ["participant_left", "participant_left", "call_ended"]
    left = [row for name, row in received if name == "participant_left"]
    assert [(row.user_id, row.leave_reason) for row in left] == [(bob.pk, "left"), (alice.pk, "left")]
    ended = received[-1][1]
    assert ended.pk == call.pk and ended.ended_at is not None


async def test_an_ended_call_tells_each_participant_and_the_end_once(
    in_room: InRoom, alice: User, bob: User, team: Group, received: list[tuple[str, Any]]
) -> None:
    a, _ = await in_room("ended", alice, bob, metadata={"groupId": team.pk})
    await a.send("webrtc:end-call", {"callRoomId": "ended"}, id="end")
    await a.expect("webrtc:ack")  # the reply goes out before what the request addressed to its sender
    await a.expect("webrtc:call-ended")
    await history_written()
    after_joins = names(received)[3:]
    assert sorted(after_joins) == ["call_ended", "participant_left", "participant_left"]
    ended = next(row for name, row in received if name == "call_ended")
    assert ended.ended_by_id == alice.pk
    reasons = {row.leave_reason for name, row in received if name == "participant_left"}
    assert reasons == {CallParticipant.LeaveReason.CALL_ENDED}


async def test_a_ring_that_times_out_tells_ring_missed_once(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, team: Group, received: list[tuple[str, Any]]
) -> None:
    (a,) = await in_room("rung", alice, metadata={"groupId": team.pk})
    await connect(bob)
    with override_settings(CALLS_RING_TIMEOUT_SECS=0):
        await a.send("webrtc:ring", {"callRoomId": "rung", "userIds": [str(bob.pk)]}, id="r")
        await a.expect("webrtc:ring-started")
    await history_written()
    assert await ringing.expire_rings() == 1
    assert await ringing.expire_rings() == 0
    await history_written()
    missed = [row for name, row in received if name == "ring_missed"]
    assert len(missed) == 1 and isinstance(missed[0], CallRing)
    assert (missed[0].callee_id, missed[0].outcome) == (bob.pk, "missed")


async def test_a_failing_receiver_neither_stops_the_others_nor_the_history(
    in_room: InRoom, alice: User, received: list[tuple[str, Any]]
) -> None:
    def broken(sender: type, **kwargs: Any) -> None:
        raise RuntimeError("the host's receiver is broken")

    signals.participant_joined.connect(broken)
    try:
        await in_room("robust", alice)
        await history_written()
    finally:
        signals.participant_joined.disconnect(broken)
    assert "participant_joined" in names(received)
    assert await CallParticipant.objects.filter(call__room_id="robust").acount() == 1


def test_a_departure_whose_join_was_never_written_is_recorded_whole(
    alice: User, bob: User, received: list[tuple[str, Any]]
) -> None:
    """A process killed between a join and its history batch never wrote that join; the
    process that reaps the participant as ``lost`` writes it, with its session, from
    presence, and tells each signal once."""
    from calls import history
    from calls.presence.base import Departure, Member, Participant, RoomSession
    from calls.protocol import LeaveReason

    joined_at = "2026-12-01T10:00:00.000Z"
    session = RoomSession(
        room_id="never-written",
        session_id="s-never-written",
        metadata={"callType": "audio", "createdBy": str(alice.pk), "createdAt": joined_at},
    )
    lost, stays = (
        Participant(f"sock-{user.pk}", str(user.pk), user.username, display_name="", joined_at=joined_at)
        for user in (bob, alice)
    )
    departure = Departure(session, lost, (Member(stays, "chan-alice"),))
    leave = {"departure": departure, "reason": LeaveReason.LOST, "counts": history.RelayCounts()}

    history._apply([(history.record_leave, leave)])

    call = CallRoom.objects.get(session_id="s-never-written")
    assert (call.room_id, call.call_type, call.created_by_id, call.ended_at) == (
        "never-written",
        "audio",
        alice.pk,
        None,
    )
    assert call.peak_participants == 2
    row = CallParticipant.objects.get(call=call)
    assert (row.user_id, row.socket_id, row.leave_reason) == (bob.pk, lost.socket_id, "lost")
    assert row.joined_at.isoformat() == "2026-12-01T10:00:00+00:00" and row.left_at is not None
    assert names(received) == ["call_started", "participant_joined", "participant_left"]

    # The same departure again (a reap repeated) writes and tells nothing more.
    history._apply([(history.record_leave, leave)])
    assert list(CallParticipant.objects.filter(call=call).values_list("pk", "left_at")) == [(row.pk, row.left_at)]
    assert names(received) == ["call_started", "participant_joined", "participant_left"]

    # The join's own batch, late, finds the row there and leaves it alone.
    history._apply([(history.record_join, {"session": session, "participant": lost, "member_count": 2})])
    assert list(CallParticipant.objects.filter(call=call).values_list("pk", "left_at")) == [(row.pk, row.left_at)]
    assert names(received) == ["call_started", "participant_joined", "participant_left"]
