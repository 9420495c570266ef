"""Tests that flooding is limited as docs/protocol.md §5 rule 7 says, and that the mesh
burst of a newcomer to a full room still passes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from accounts.models import User
from calls.limits import DROPS_BEFORE_CLOSE, FrameLimiter, Verdict
from tests.calls.conftest import InRoom, all_silent
from tests.conftest import ConnectFactory, make_user

pytestmark = pytest.mark.django_db(transaction=True)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_admits_a_burst_then_the_sustained_rate() -> None:
    clock = FakeClock()
    limiter = FrameLimiter(rate=10, burst=5, clock=clock)
    assert [limiter.admit() for _ in range(5)] == [Verdict.ADMIT] * 5
    assert limiter.admit() is Verdict.DROP_WITH_ERROR
    clock.now += 0.1  # one token back
    assert limiter.admit() is Verdict.ADMIT
    assert limiter.admit() is Verdict.DROP  # the error was sent less than a second ago
    clock.now += 10  # refills to the burst, not beyond
    assert [limiter.admit() for _ in range(6)] == [Verdict.ADMIT] * 5 + [Verdict.DROP_WITH_ERROR]


def test_a_rate_limited_error_is_answered_at_most_once_a_second() -> None:
    clock = FakeClock()
    limiter = FrameLimiter(rate=0.001, burst=1, clock=clock)
    limiter.admit()
    verdicts = []
    for _ in range(30):
        verdicts.append(limiter.admit())
        clock.now += 0.1
    assert verdicts.count(Verdict.DROP_WITH_ERROR) == 3


def test_the_connection_closes_at_1000_drops_within_a_minute() -> None:
    clock = FakeClock()
    limiter = FrameLimiter(rate=0.0001, burst=1, clock=clock)
    limiter.admit()
    for _ in range(DROPS_BEFORE_CLOSE - 1):
        assert limiter.admit() is not Verdict.CLOSE
        clock.now += 0.05
    assert limiter.admit() is Verdict.CLOSE


def test_drops_older_than_a_minute_are_forgotten() -> None:
    clock = FakeClock()
    limiter = FrameLimiter(rate=0.0001, burst=1, clock=clock)
    limiter.admit()
    for _ in range(DROPS_BEFORE_CLOSE * 3):
        assert limiter.admit() is not Verdict.CLOSE
        clock.now += 0.061  # 1000 drops span more than a minute


async def test_excess_frames_are_dropped_with_one_rate_limited_error(
    in_room: InRoom, settings: Any, alice: User, bob: User
) -> None:
    settings.CALLS_RATE_BURST = 6  # the join, then five relays
    settings.CALLS_RATE_LIMIT = 1
    sender, receiver = await in_room("r", alice, bob)
    for i in range(20):
        await sender.send("webrtc:ice-candidate", {"callRoomId": "r", "targetSocketId": receiver.socket_id,
                                                   "candidate": f"c{i}"})  # fmt: skip
    error = await sender.expect_error("rate-limited")
    assert "id" not in error
    delivered = [(await receiver.expect("webrtc:ice-candidate"))["data"]["candidate"] for _ in range(5)]
    assert delivered == [f"c{i}" for i in range(5)]
    await all_silent(sender, receiver)


async def test_the_rate_is_checked_before_the_content(in_room: InRoom, settings: Any, alice: User, bob: User) -> None:
    """Tests docs/protocol.md §3's order: a frame over the rate is answered ``rate-limited``,
    not judged on its content (here: not JSON at all)."""
    settings.CALLS_RATE_BURST = 1  # the join
    settings.CALLS_RATE_LIMIT = 1
    sender, receiver = await in_room("r", alice, bob)
    await sender.send_raw("not json")
    await sender.expect_error("rate-limited")
    await all_silent(sender, receiver)


async def test_a_flooding_connection_is_closed_with_4429(
    in_room: InRoom, settings: Any, alice: User, bob: User
) -> None:
    assert DROPS_BEFORE_CLOSE == 1000  # docs/protocol.md §5 rule 7
    settings.CALLS_RATE_BURST = 2  # the join, then one relay
    settings.CALLS_RATE_LIMIT = 1
    flooder, other = await in_room("r", alice, bob)
    frame = json.dumps({"event": "webrtc:ice-candidate", "data": {"callRoomId": "r", "candidate": "x"}})
    for _ in range(DROPS_BEFORE_CLOSE + 1):
        await flooder.send_raw(frame)
    outputs = []
    while not outputs or outputs[-1]["type"] != "websocket.close":
        outputs.append(await flooder.communicator.receive_output(timeout=5))
    assert outputs[-1] == {"type": "websocket.close", "code": 4429}
    errors = [json.loads(o["text"])["data"]["error"] for o in outputs[:-1]]
    assert set(errors) == {"rate-limited"}
    assert (await other.expect("webrtc:ice-candidate"))["data"]["fromSocketId"] == flooder.socket_id
    # Until the server's disconnect arrives, frames for the closed socket are dropped, not sent.
    await other.send("webrtc:ice-candidate", {"callRoomId": "r", "targetSocketId": flooder.socket_id, "candidate": "y"})
    await other.expect_silence()
    assert await flooder.communicator.receive_nothing(timeout=0.2)
    await flooder.close()  # the server's disconnect event, as a real server sends it after the close
    left = await other.expect("webrtc:participant-left")
    assert left["data"]["reason"] == "disconnected"


async def test_a_newcomer_to_a_full_mesh_sends_its_whole_burst(
    connect: ConnectFactory, in_room: InRoom, settings: object
) -> None:
    """15 offers and 20 candidates to each of 15 others (315 frames at once) pass the
    default limits (docs/protocol.md §5 rule 7)."""
    users = [await asyncio.to_thread(make_user, f"user{i}") for i in range(16)]
    others = await in_room("mesh", *users[:15])
    newcomer = await connect(users[15])
    await newcomer.join("mesh")
    for other in others:
        await other.expect("webrtc:participant-joined")
    for other in others:
        offer = {"type": "offer", "sdp": "v=0"}
        await newcomer.send("webrtc:offer", {"callRoomId": "mesh", "targetSocketId": other.socket_id, "offer": offer})
        for i in range(20):
            await newcomer.send("webrtc:ice-candidate", {"callRoomId": "mesh", "targetSocketId": other.socket_id,
                                                         "candidate": f"candidate:{i}"})  # fmt: skip

    async def all_arrive(other: object) -> None:
        await other.expect("webrtc:offer")  # type: ignore[attr-defined]
        for _ in range(20):
            await other.expect("webrtc:ice-candidate")  # type: ignore[attr-defined]

    await asyncio.gather(*(all_arrive(other) for other in others))
    await newcomer.expect_silence()


def test_the_error_log_is_sampled_once_a_second_and_counts_what_it_left_out() -> None:
    clock = FakeClock()
    limiter = FrameLimiter(rate=100, burst=500, clock=clock)

    assert limiter.may_log_error() == 0
    assert [limiter.may_log_error() for _ in range(5)] == [None] * 5
    clock.now += 1.0
    assert limiter.may_log_error() == 5
    assert limiter.may_log_error() is None
