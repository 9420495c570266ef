"""Tests that several real daphne processes sharing one Redis serve one set of rooms
(docs/protocol.md §5 rule 8), and survive a process kill and a Redis restart (rule 4); each
on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.redis_server import RedisServer
from tests.servers import Server, ServerDatabase, prepare_database, start_daphnes
from tests.wsclient import WsClient

PRESENCE_TTL_SECS = 3  # the smallest the settings allow, to keep the kill test short
LOST_MARGIN_SECS = 3.0  # scheduling slack on a loaded two-core CI machine
USERS = ("alice", "bob", "carol")
RETRY_INTERVAL_SECS = 0.05
HISTORY_TIMEOUT_SECS = 5.0


@dataclass
class Cluster:
    servers: list[Server]
    redis: RedisServer
    database: ServerDatabase
    tokens: dict[str, str]

    def rows(self, sql: str, *params: object) -> list[tuple]:
        return self.database.rows(sql, *params)

    async def rows_become(self, expected: list[tuple], sql: str, *params: object) -> None:
        """Wait until the query answers ``expected``: call history is written just after
        the replies, in batches."""
        deadline = time.monotonic() + HISTORY_TIMEOUT_SECS
        while (rows := self.rows(sql, *params)) != expected:
            assert time.monotonic() < deadline, f"{sql} gave {rows}, not {expected}"
            await asyncio.sleep(RETRY_INTERVAL_SECS)


@pytest.fixture
def cluster(tmp_path: Path, database: ServerDatabase) -> Iterator[Cluster]:
    """Redis, a shared database and three daphne processes; all stopped after."""
    redis = RedisServer(tmp_path / "redis").start()
    env = database.env(REDIS_URL=redis.url, CALLS_PRESENCE_TTL_SECS=str(PRESENCE_TTL_SECS))
    servers: list[Server] = []
    try:
        prepare_database(env)
        servers = start_daphnes(env, [tmp_path / f"daphne{i}.log" for i in range(3)])
        tokens = {user: servers[0].token(user) for user in USERS}
        yield Cluster(servers, redis, database, tokens)
    finally:
        for server in servers:
            server.stop(signal.SIGKILL)
        redis.stop()


async def connect_to(cluster: Cluster, ws_clients: list[WsClient], server: int, user: str) -> WsClient:
    client = await WsClient.open(cluster.servers[server].ws, cluster.tokens[user])
    ws_clients.append(client)
    return client


async def test_participants_on_different_processes_signal_each_other(
    cluster: Cluster, ws_clients: list[WsClient]
) -> None:
    alice = await connect_to(cluster, ws_clients, 0, "alice")
    bob = await connect_to(cluster, ws_clients, 1, "bob")
    carol = await connect_to(cluster, ws_clients, 2, "carol")
    await alice.join("x-room")
    joined = await bob.join("x-room")
    assert [p["socketId"] for p in joined["existingParticipants"]] == [alice.socket_id]
    assert (await alice.expect("webrtc:participant-joined"))["data"]["participant"]["socketId"] == bob.socket_id
    joined = await carol.join("x-room")
    assert joined["participantCount"] == 3
    assert [p["socketId"] for p in joined["existingParticipants"]] == [alice.socket_id, bob.socket_id]
    await alice.expect("webrtc:participant-joined")
    await bob.expect("webrtc:participant-joined")

    offer = {"type": "offer", "sdp": "v=0 offer"}
    await alice.send("webrtc:offer", {"callRoomId": "x-room", "targetSocketId": carol.socket_id, "offer": offer})
    relayed = (await carol.expect("webrtc:offer"))["data"]
    assert (relayed["fromSocketId"], relayed["fromUserId"], relayed["offer"]) == (alice.socket_id, alice.user_id, offer)
    answer = {"type": "answer", "sdp": "v=0 answer"}
    await carol.send("webrtc:answer", {"callRoomId": "x-room", "targetSocketId": alice.socket_id, "answer": answer})
    assert (await alice.expect("webrtc:answer"))["data"]["answer"] == answer
    await bob.expect_silence()

    await bob.send(
        "webrtc:ice-candidate", {"callRoomId": "x-room", "targetSocketId": alice.socket_id, "candidate": "c1"}
    )
    assert (await alice.expect("webrtc:ice-candidate"))["data"]["candidate"] == "c1"
    await carol.expect_silence()
    await bob.send("webrtc:ice-candidate", {"callRoomId": "x-room", "candidate": "everyone"})
    for other in (alice, carol):
        assert (await other.expect("webrtc:ice-candidate"))["data"]["fromSocketId"] == bob.socket_id
    await bob.expect_silence()

    await alice.send("webrtc:offer", {"callRoomId": "x-room", "targetSocketId": "gone", "offer": offer})
    assert (await alice.expect("webrtc:signaling-error"))["data"]["error"] == "participant-not-found"


async def test_concurrent_first_joins_across_processes_make_one_session(
    cluster: Cluster, ws_clients: list[WsClient]
) -> None:
    joiners = [await connect_to(cluster, ws_clients, i % 3, USERS[i % 3]) for i in range(9)]
    results = await asyncio.gather(*(client.join("race") for client in joiners))
    assert sorted(r["participantCount"] for r in results) == list(range(1, 10))
    assert len({r["metadata"]["createdAt"] for r in results}) == 1
    await cluster.rows_become([(1,)], "SELECT count(*) FROM calls_callroom WHERE room_id = 'race'")
    await cluster.rows_become([(9,)], "SELECT count(*) FROM calls_callparticipant")
    # Still live, everyone in it: no process took the others' fresh row for a leftover.
    assert cluster.rows("SELECT count(*) FROM calls_callroom WHERE ended_at IS NULL") == [(1,)]
    assert cluster.rows("SELECT count(*) FROM calls_callparticipant WHERE left_at IS NULL") == [(9,)]


async def test_one_process_emptying_keeps_the_room(cluster: Cluster, ws_clients: list[WsClient]) -> None:
    alice, bob = await pair_in_room(cluster, ws_clients, "keep")
    await alice.send("webrtc:leave-room", {"callRoomId": "keep"})
    await alice.expect("webrtc:room-left")
    assert (await bob.expect("webrtc:participant-left"))["data"]["reason"] == "left"
    carol = await connect_to(cluster, ws_clients, 2, "carol")
    joined = await carol.join("keep")
    assert [p["socketId"] for p in joined["existingParticipants"]] == [bob.socket_id]
    await cluster.rows_become([(1,)], "SELECT count(*) FROM calls_callroom WHERE room_id = 'keep' AND ended_at IS NULL")


async def test_a_killed_process_participants_are_lost_within_the_ttl(
    cluster: Cluster, ws_clients: list[WsClient]
) -> None:
    alice, doomed = await pair_in_room(cluster, ws_clients, "kill")  # doomed is on process 1

    killed_at = time.monotonic()
    cluster.servers[1].stop(signal.SIGKILL)
    left = await alice.expect("webrtc:participant-left", timeout=PRESENCE_TTL_SECS + LOST_MARGIN_SECS)
    assert left["data"]["reason"] == "lost"
    assert left["data"]["participant"]["socketId"] == doomed.socket_id
    assert time.monotonic() - killed_at < PRESENCE_TTL_SECS + LOST_MARGIN_SECS

    carol = await connect_to(cluster, ws_clients, 2, "carol")
    joined = await carol.join("kill")
    assert [p["socketId"] for p in joined["existingParticipants"]] == [alice.socket_id]
    await cluster.rows_become([(1, "lost")],
                              "SELECT left_at IS NOT NULL, leave_reason FROM calls_callparticipant WHERE socket_id = ?",
                              doomed.socket_id)  # fmt: skip
    await alice.expect("webrtc:participant-joined")
    await alice.expect_silence(0.5)  # told once, whichever survivor noticed


async def pair_in_room(cluster: Cluster, ws_clients: list[WsClient], room: str) -> tuple[WsClient, WsClient]:
    """alice on process 0 and bob on process 1, both in ``room``."""
    alice = await connect_to(cluster, ws_clients, 0, "alice")
    bob = await connect_to(cluster, ws_clients, 1, "bob")
    await alice.join(room)
    await bob.join(room)
    await alice.expect("webrtc:participant-joined")
    return alice, bob


async def signaling_recovers(alice: WsClient, bob: WsClient, room: str) -> dict:
    """Send candidates from alice to bob until one arrives; each attempt may instead be
    answered with internal-error while presence is restored, or lost while the layer
    resubscribes. Fails if nothing arrives within the TTL plus the margin."""
    deadline = time.monotonic() + PRESENCE_TTL_SECS + LOST_MARGIN_SECS
    while time.monotonic() < deadline:
        candidate = {"callRoomId": room, "targetSocketId": bob.socket_id, "candidate": "after"}
        await alice.send("webrtc:ice-candidate", candidate)
        delivered = await bob_or_error(alice, bob)
        if delivered is not None:
            assert delivered["data"]["fromSocketId"] == alice.socket_id
            return delivered
        await asyncio.sleep(RETRY_INTERVAL_SECS)  # pace the attempts well under the rate limit
    raise AssertionError("signaling did not recover")


async def bob_or_error(alice: WsClient, bob: WsClient) -> dict | None:
    """The candidate as bob got it, or ``None`` if alice was answered with an error or
    nothing arrived in a short while."""
    bob_gets = asyncio.ensure_future(bob.receive(timeout=0.5))
    alice_gets = asyncio.ensure_future(alice.receive(timeout=0.5))
    done, pending = await asyncio.wait({bob_gets, alice_gets}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if bob_gets in done and bob_gets.exception() is None:
        return bob_gets.result()
    if alice_gets in done and alice_gets.exception() is None:
        assert alice_gets.result()["data"]["error"] == "internal-error"
    return None


async def test_a_call_keeps_signaling_across_a_redis_restart(cluster: Cluster, ws_clients: list[WsClient]) -> None:
    alice, bob = await pair_in_room(cluster, ws_clients, "survive")

    cluster.redis.restart()  # no persistence: every key is gone

    await signaling_recovers(alice, bob, "survive")
    carol = await connect_to(cluster, ws_clients, 2, "carol")
    joined = await carol.join("survive")
    assert [p["socketId"] for p in joined["existingParticipants"]] == [alice.socket_id, bob.socket_id]


async def test_an_unreachable_redis_gives_internal_errors_then_signaling_recovers(
    cluster: Cluster, ws_clients: list[WsClient]
) -> None:
    alice, bob = await pair_in_room(cluster, ws_clients, "outage")

    cluster.redis.stop()
    await alice.send("webrtc:join-room", {"callRoomId": "elsewhere"}, id="during")
    refused = await alice.expect("webrtc:signaling-error")
    assert (refused["data"]["error"], refused["id"]) == ("internal-error", "during")
    offer = {"callRoomId": "outage", "targetSocketId": bob.socket_id, "offer": {"type": "offer", "sdp": "v=0"}}
    await alice.send("webrtc:offer", offer)
    assert (await alice.expect("webrtc:signaling-error"))["data"]["error"] == "internal-error"
    assert all(server.process.poll() is None for server in cluster.servers), "a process died"

    cluster.redis.start()
    await signaling_recovers(alice, bob, "outage")
    carol = await connect_to(cluster, ws_clients, 2, "carol")
    joined = await carol.join("outage")
    assert [p["socketId"] for p in joined["existingParticipants"]] == [alice.socket_id, bob.socket_id]


async def test_frames_for_a_stalled_client_on_another_process_are_capped_and_counted(
    cluster: Cluster, ws_clients: list[WsClient]
) -> None:
    """Tests that a client that stops reading holds at most its mailbox's worth of frames
    sent from another process: the rest are dropped and counted by its process (the
    sender, elsewhere, cannot be told), and it gets all the others, in order, once it
    reads again; both connections keep working."""
    alice, bob = await pair_in_room(cluster, ws_clients, "stall")
    carol = await connect_to(cluster, ws_clients, 1, "carol")  # on bob's process, reading
    await carol.join("stall")
    await alice.expect("webrtc:participant-joined")
    await bob.expect("webrtc:participant-joined")
    bob.connection.transport.pause_reading()  # bob's client stops reading its socket
    filler = secrets.token_urlsafe(30_000)  # random: nothing on the way can compress it
    offers = 450  # within the default burst of 500 frames
    for seq in range(offers):
        offer = {"type": "offer", "sdp": f"v=0\r\na=x-seq:{seq}\r\na=x-filler:{filler}\r\n"}
        await alice.send("webrtc:offer", {"callRoomId": "stall", "targetSocketId": bob.socket_id, "offer": offer})
    # alice's frames are relayed in order, and bob's process takes what alice's process
    # publishes in order: once carol has this candidate, every offer reached bob's process.
    await alice.send(
        "webrtc:ice-candidate", {"callRoomId": "stall", "targetSocketId": carol.socket_id, "candidate": ""}
    )
    await carol.expect("webrtc:ice-candidate", timeout=30)
    dropped = int(cluster.servers[1].metric("calls_dropped_messages_total"))
    assert dropped > 0, "nothing was dropped for a client that reads nothing"
    bob.connection.transport.resume_reading()
    received = []
    while len(received) < offers - dropped:
        frame = await bob.expect("webrtc:offer", timeout=10)
        received.append(int(re.search(r"a=x-seq:(\d+)", frame["data"]["offer"]["sdp"]).group(1)))
    assert received == sorted(set(received))  # in order, none twice
    assert set(received) <= set(range(offers))
    await bob.expect_silence()
    await alice.expect_silence()  # the sender is not told

    await bob.send("webrtc:ice-candidate", {"callRoomId": "stall", "targetSocketId": alice.socket_id, "candidate": ""})
    await alice.expect("webrtc:ice-candidate")
    await alice.send("webrtc:ice-candidate", {"callRoomId": "stall", "targetSocketId": bob.socket_id, "candidate": ""})
    await bob.expect("webrtc:ice-candidate")
