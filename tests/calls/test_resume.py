"""Resume after a dropped connection (docs/protocol.md §5 rule 4 and §6), in one process:
parking, the buffer, the token's rules, the end of the grace, shutdown, history."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import override_settings
from prometheus_client import REGISTRY

from accounts.models import User
from calls import delivery, process, services
from calls.models import CallParticipant
from calls.presence.base import parked_channel
from calls.protocol import Event, Outgoing, RelayedIceCandidate
from calls.services import resume
from tests.calls.conftest import InRoom, all_silent
from tests.conftest import Client, ConnectFactory, access_token, history_written

pytestmark = pytest.mark.django_db(transaction=True)


def candidate(n: int) -> dict[str, Any]:
    return {"candidate": f"candidate:{n} 1 udp 2122260223 10.0.0.{n} 5000{n} typ host", "sdpMid": "0"}


async def resume_as(connect: ConnectFactory, user: User, token: str) -> tuple[Client, dict[str, Any]]:
    """Connect ``user`` presenting ``token``; returns the client and its ``webrtc:connected``."""
    client = await connect(path=f"/ws/calls/?token={access_token(user)}&resume={token}", expect_connected=False)
    connected = await client.expect("webrtc:connected")
    client.socket_id = connected["data"]["socketId"]
    client.resume_token = connected["data"]["resumeToken"]
    return client, connected["data"]


async def resumed_as(connect: ConnectFactory, user: User, token: str, socket_id: str) -> tuple[Client, dict[str, Any]]:
    """Connect ``user`` presenting ``token``, resumed as ``socket_id``; returns the client and
    the data of its ``webrtc:resumed``."""
    client, connected = await resume_as(connect, user, token)
    assert connected["socketId"] == socket_id
    return client, (await client.expect("webrtc:resumed"))["data"]


async def relay_to(sender: Client, room: str, target: str, event: str, payload: dict[str, Any], id: str) -> None:
    await sender.send(event, {"callRoomId": room, "targetSocketId": target, **payload}, id=id)
    ack = await sender.expect("webrtc:ack")
    assert ack["id"] == id, ack


def relayed_candidate(room: str, sender: Client, user: User, n: int) -> Outgoing:
    """``candidate(n)`` as the rules relay it from ``sender`` (of ``user``), for a test to
    put where a relay would."""
    data = RelayedIceCandidate(
        callRoomId=room, fromSocketId=sender.socket_id, fromUserId=str(user.pk), candidate=candidate(n)
    )
    return Outgoing(Event.ICE_CANDIDATE, data)


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_a_dropped_connection_resumes_with_what_it_missed_in_order(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User
) -> None:
    a, b, c = await in_room("resume-1", alice, bob, carol)
    await a.drop()
    await all_silent(b, c)  # nobody is told: alice is parked
    await relay_to(b, "resume-1", a.socket_id, "webrtc:offer", {"offer": {"type": "offer", "sdp": "v=0 o"}}, "o")
    for n in range(3):
        await relay_to(b, "resume-1", a.socket_id, "webrtc:ice-candidate", {"candidate": candidate(n)}, f"c{n}")

    again, resumed = await resumed_as(connect, alice, a.resume_token, a.socket_id)

    assert again.resume_token != a.resume_token
    assert resumed == {"socketId": a.socket_id, "callRoomId": "resume-1", "missed": 4}
    offer = await again.expect("webrtc:offer")
    assert offer["data"]["fromSocketId"] == b.socket_id and offer["data"]["offer"]["sdp"] == "v=0 o"
    for n in range(3):
        relayed = await again.expect("webrtc:ice-candidate")
        assert relayed["data"]["candidate"] == candidate(n)
    # Then live traffic, both ways, and nobody saw alice leave or join.
    await relay_to(b, "resume-1", a.socket_id, "webrtc:ice-candidate", {"candidate": candidate(9)}, "live")
    assert (await again.expect("webrtc:ice-candidate"))["data"]["candidate"] == candidate(9)
    await relay_to(again, "resume-1", c.socket_id, "webrtc:answer", {"answer": {"type": "answer", "sdp": "v=0 a"}}, "a")
    assert (await c.expect("webrtc:answer"))["data"]["fromSocketId"] == a.socket_id
    await b.round_trip()
    await c.round_trip()


async def test_a_connection_closed_with_a_close_frame_leaves_at_once(in_room: InRoom, alice: User, bob: User) -> None:
    a, b = await in_room("resume-close", alice, bob)
    await a.close()  # code 1000
    left = await b.expect("webrtc:participant-left")
    assert (left["data"]["participant"]["socketId"], left["data"]["reason"]) == (a.socket_id, "disconnected")
    assert await process.current().presence.parked_count() == 0


async def test_a_participant_that_never_comes_back_leaves_once_after_the_grace(
    in_room: InRoom, alice: User, bob: User
) -> None:
    a, b = await in_room("resume-grace", alice, bob)
    with override_settings(CALLS_RESUME_GRACE_SECS=0.2):
        await a.drop()
    await b.round_trip()
    assert await resume.expire_parked() == 0  # within the grace: still parked
    await asyncio.sleep(0.25)  # the grace itself is what is tested here
    assert await resume.expire_parked() == 1
    left = await b.expect("webrtc:participant-left")
    assert (left["data"]["participant"]["socketId"], left["data"]["reason"]) == (a.socket_id, "disconnected")
    assert await resume.expire_parked() == 0
    await b.round_trip()  # told once


async def test_a_full_buffer_drops_the_oldest_and_missed_counts_what_was_kept(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User
) -> None:
    a, b = await in_room("resume-full", alice, bob)
    dropped_before = metric("calls_resume_buffer_dropped_total")
    with override_settings(CALLS_RESUME_BUFFER=3):
        await a.drop()
    for n in range(5):
        await relay_to(b, "resume-full", a.socket_id, "webrtc:ice-candidate", {"candidate": candidate(n)}, f"c{n}")

    again, _ = await resume_as(connect, alice, a.resume_token)

    assert (await again.expect("webrtc:resumed"))["data"]["missed"] == 3
    for n in (2, 3, 4):
        assert (await again.expect("webrtc:ice-candidate"))["data"]["candidate"] == candidate(n)
    await again.round_trip()
    assert metric("calls_resume_buffer_dropped_total") - dropped_before == 2


async def expect_refused(connect: ConnectFactory, user: User, token: str, old_socket_id: str) -> Client:
    client, connected = await resume_as(connect, user, token)
    assert connected["socketId"] != old_socket_id
    await client.expect_error("resume-failed")
    await client.round_trip()
    return client


async def test_a_token_resumes_once(in_room: InRoom, connect: ConnectFactory, alice: User, bob: User) -> None:
    a, b = await in_room("resume-once", alice, bob)
    await a.drop()
    again, _ = await resume_as(connect, alice, a.resume_token)
    await again.expect("webrtc:resumed")
    await again.drop()

    failures = metric("calls_resume_failures_total")
    await expect_refused(connect, alice, a.resume_token, a.socket_id)  # the first token, used
    assert metric("calls_resume_failures_total") == failures + 1
    await resumed_as(connect, alice, again.resume_token, a.socket_id)  # the one it was given
    await b.round_trip()


async def test_another_users_token_garbage_and_an_expired_token_are_refused(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User
) -> None:
    a, b = await in_room("resume-refused", alice, bob)
    with override_settings(CALLS_RESUME_GRACE_SECS=0.2):
        await a.drop()
    await expect_refused(connect, bob, a.resume_token, a.socket_id)  # bob's credential, alice's token
    forged = a.resume_token.rsplit(".", 1)[0] + "." + "0" * 32
    await expect_refused(connect, alice, forged, a.socket_id)
    await expect_refused(connect, alice, "nonsense", a.socket_id)
    await b.round_trip()  # alice is still parked: nobody was told anything
    await asyncio.sleep(0.25)  # past the grace
    await resume.expire_parked()
    await b.expect("webrtc:participant-left")
    await expect_refused(connect, alice, a.resume_token, a.socket_id)


async def test_of_two_concurrent_resumes_of_one_token_exactly_one_wins(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User
) -> None:
    a, b = await in_room("resume-race", alice, bob)
    await a.drop()
    outcomes = await asyncio.gather(*(resume_as(connect, alice, a.resume_token) for _ in range(2)))
    ids = sorted(connected["socketId"] == a.socket_id for _, connected in outcomes)
    assert ids == [False, True]
    for client, connected in outcomes:
        if connected["socketId"] == a.socket_id:
            await client.expect("webrtc:resumed")
        else:
            await client.expect_error("resume-failed")
    await b.round_trip()


async def test_a_resume_takes_over_a_connection_the_server_still_thinks_alive(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User
) -> None:
    # A phone on a new network comes back before the server noticed its old socket die.
    a, b = await in_room("resume-takeover", alice, bob)
    again, resumed = await resumed_as(connect, alice, a.resume_token, a.socket_id)
    await a.expect_close(1001)  # (without waiting for its close frame, which a dead client never sends)
    assert resumed["callRoomId"] == "resume-takeover"
    await relay_to(b, "resume-takeover", a.socket_id, "webrtc:ice-candidate", {"candidate": candidate(1)}, "c")
    assert (await again.expect("webrtc:ice-candidate"))["data"]["candidate"] == candidate(1)
    await b.round_trip()


async def test_a_connection_in_no_room_resumes_to_no_room(connect: ConnectFactory, alice: User) -> None:
    a = await connect(alice)
    await a.drop()
    _, resumed = await resumed_as(connect, alice, a.resume_token, a.socket_id)
    assert resumed == {"socketId": a.socket_id, "callRoomId": None, "missed": 0}


async def test_shutdown_parks_instead_of_announcing(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User
) -> None:
    a, b = await in_room("resume-shutdown", alice, bob)
    await services.shut_down_connections(timeout_secs=5)
    await a.expect_close(1001)
    await b.expect_close(1001)
    assert await process.current().presence.parked_count() == 2
    process.current().all_closed = None  # (the same state serves on: a new process would)
    again, resumed = await resumed_as(connect, alice, a.resume_token, a.socket_id)
    assert resumed["missed"] == 0
    await again.round_trip()


async def test_a_frame_queued_behind_the_close_that_parks_is_kept_for_the_resume(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User
) -> None:
    # A shutdown (or a takeover) asks for 1001, and in the same turn of the event loop
    # an inbox or a local relay queues a frame behind that request: the frame never
    # reached the client, so it is the resume's to deliver, not the closed socket's.
    a, b = await in_room("resume-behind-close", alice, bob)
    mailbox = process.current().mailboxes[a.socket_id]
    mailbox.put_close(1001)
    mailbox.put_frame(relayed_candidate("resume-behind-close", b, bob, 7))
    await a.expect_close(1001)
    again, resumed = await resumed_as(connect, alice, a.resume_token, a.socket_id)
    assert resumed["missed"] == 1
    assert (await again.expect("webrtc:ice-candidate"))["data"]["candidate"] == candidate(7)
    await again.round_trip()
    await b.round_trip()


async def test_a_relay_routed_to_the_parked_address_after_the_resume_reaches_the_resumed_connection(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User
) -> None:
    # Without forwarding, a relay is routed (to "parked#…") and then buffered, two
    # calls to presence: the target may resume between them.
    a, b = await in_room("resume-routed-before", alice, bob)
    await a.drop()
    again, _ = await resumed_as(connect, alice, a.resume_token, a.socket_id)

    undelivered = await delivery.deliver(
        [parked_channel(a.socket_id)], relayed_candidate("resume-routed-before", b, bob, 8)
    )

    assert undelivered == 0
    assert (await again.expect("webrtc:ice-candidate"))["data"]["candidate"] == candidate(8)
    await again.round_trip()


async def test_a_resumed_participant_is_one_participation_with_a_resume_count(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User
) -> None:
    a, _ = await in_room("resume-history", alice, bob)
    await a.drop()
    again, _ = await resume_as(connect, alice, a.resume_token)
    await again.expect("webrtc:resumed")
    await history_written()
    rows = await database_sync_to_async(list)(
        CallParticipant.objects.filter(socket_id=a.socket_id).values_list("resumes", "left_at")
    )
    assert rows == [(1, None)]


async def test_a_resumed_connection_takes_its_predecessors_place_in_the_connection_limit(
    connect: ConnectFactory, alice: User
) -> None:
    # docs/protocol.md §2: CALLS_MAX_CONNECTIONS_PER_USER counts a resumed connection once.
    with override_settings(CALLS_MAX_CONNECTIONS_PER_USER=2):
        first = await connect(alice)
        await connect(alice)
        await first.drop()  # parked: still holds its place among alice's connections
        again, connected = await resume_as(connect, alice, first.resume_token)
        assert connected["socketId"] == first.socket_id
        await again.expect("webrtc:resumed")
        third = await connect(alice, expect_connected=False)
        await third.expect_close(4409)  # two connections still, the resumed one among them
        await again.close()  # the resumed one gone: its place (the predecessor's) is free
        fourth = await connect(alice)
        await fourth.round_trip()
