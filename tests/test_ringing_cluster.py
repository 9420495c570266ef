"""Tests of ringing and moderation (docs/protocol.md §9, §10) with real processes: two
daphne processes sharing one Redis, clients on real sockets. A callee's connections on
both processes are rung and told the end of the ring; a ring outlives the process of its
ringer (its timeout is presence's, ended by whichever process gets there); a ban or a
lock set through one process holds on the other.

Silence is proven with sentinels (``WsClient.round_trip``). The kill test waits for the
ring's timeout, which is what it tests, with a deadline.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.redis_server import RedisServer
from tests.servers import Server, ServerDatabase, prepare_database, start_daphnes
from tests.wsclient import WsClient

RING_TIMEOUT_SECS = 3  # CALLS_RING_TIMEOUT_SECS of the processes
PRESENCE_TTL_SECS = 6  # a killed process's participants are lost after this
TIMER_SECS = 1.0  # how often a process ends what is due (rings among them)
MARGIN_SECS = 4.0  # scheduling slack on a loaded two-core machine
EARLY_SECS = 0.5  # clock and polling slack before a ring's expiresAt
HISTORY_TIMEOUT_SECS = 10.0
POLL_SECS = 0.05
USERS = ("alice", "bob", "carol")
ROOM = "demo-call"
RESTORED = "Redis had lost this process's"  # the log line of a process putting its members back


@dataclass
class Cluster:
    servers: list[Server]
    redis: RedisServer
    database: ServerDatabase
    tokens: dict[str, str]
    group_id: str
    clients: list[WsClient]

    async def connect(self, server: int, user: str) -> WsClient:
        client = await WsClient.open(self.servers[server].ws, self.tokens[user])
        self.clients.append(client)
        return client

    async def join(self, client: WsClient, room: str = ROOM) -> dict[str, Any]:
        return await client.join(room, metadata={"groupId": self.group_id})

    async def rows_become(self, expected: list[tuple], sql: str, *params: object) -> None:
        deadline = time.monotonic() + HISTORY_TIMEOUT_SECS
        while (rows := await asyncio.to_thread(self.database.rows, sql, *params)) != expected:
            assert time.monotonic() < deadline, f"{sql} gave {rows}, not {expected}"
            await asyncio.sleep(POLL_SECS)

    async def redis_lost_its_data(self) -> None:
        """Flush Redis (a restart without persistence) and wait until every process has
        put back the members it holds (its heartbeat logs it), within a deadline."""
        before = [s.log().count(RESTORED) for s in self.servers]
        self.redis.flush()
        deadline = time.monotonic() + PRESENCE_TTL_SECS + MARGIN_SECS
        while any(s.log().count(RESTORED) <= n for s, n in zip(self.servers, before, strict=True)):
            assert time.monotonic() < deadline, f"not every process restored its members:\n{self.logs()}"
            await asyncio.sleep(POLL_SECS)

    def logs(self) -> str:
        return "\n".join(f"--- {s.log_path.name}\n{s.log()[-3000:]}" for s in self.servers)


ClusterFactory = Callable[[], Awaitable[Cluster]]


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database with the demo users (alice owns "Demo team", bob and
    carol are members), copied for each test."""
    path = tmp_path_factory.mktemp("ring-template") / "db.sqlite3"
    prepare_database(ServerDatabase("sqlite", path).env())
    return path


@pytest.fixture
async def make_cluster(tmp_path: Path, sqlite_template: Path) -> AsyncIterator[ClusterFactory]:
    """``await make_cluster()``: Redis and two daphne processes on a copy of the template;
    everything stopped after the test, clients first."""
    made: list[Cluster] = []
    redis_servers: list[RedisServer] = []

    async def make() -> Cluster:
        redis = RedisServer(tmp_path / "redis").start()
        redis_servers.append(redis)
        database = ServerDatabase("sqlite", tmp_path / "db.sqlite3")
        shutil.copyfile(sqlite_template, database.path)
        env = database.env(
            REDIS_URL=redis.url,
            CALLS_RING_TIMEOUT_SECS=str(RING_TIMEOUT_SECS),
            CALLS_PRESENCE_TTL_SECS=str(PRESENCE_TTL_SECS),
        )
        servers = await asyncio.to_thread(start_daphnes, env, [tmp_path / f"daphne{i}.log" for i in range(2)])
        [(group_id,)] = database.rows("SELECT id FROM chatgroups_group WHERE name = ?", "Demo team")
        cluster = Cluster(servers, redis, database, {}, str(group_id), [])
        made.append(cluster)
        cluster.tokens = {user: await asyncio.to_thread(servers[0].token, user) for user in USERS}
        return cluster

    yield make
    for cluster in made:
        for client in cluster.clients:
            try:
                await asyncio.wait_for(client.connection.close(), 2)
            except Exception:  # noqa: S110 - already closed by the test or the server
                pass
        for server in cluster.servers:
            server.stop(signal.SIGKILL)
    for redis in redis_servers:
        redis.stop()


def utc(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


async def ring(client: WsClient, user_ids: list[str], id: str = "r-1") -> dict[str, Any]:
    await client.send("webrtc:ring", {"callRoomId": ROOM, "userIds": user_ids}, id=id)
    frame = await client.expect("webrtc:ring-started")
    assert frame["id"] == id, frame
    assert frame["data"]["userIds"] == user_ids, frame
    return frame["data"]


async def incoming(client: WsClient, started: dict[str, Any], ringer: WsClient) -> None:
    frame = await client.expect("webrtc:incoming-call")
    data = frame["data"]
    assert (data["ringId"], data["callRoomId"], data["expiresAt"]) == (
        started["ringId"],
        ROOM,
        started["expiresAt"],
    ), frame
    assert data["from"]["socketId"] == ringer.socket_id, frame


async def ring_ended(client: WsClient, ring_id: str, reason: str, timeout: float = 5.0) -> None:
    frame = await client.expect("webrtc:ring-ended", timeout=timeout)
    assert frame["data"] == {"ringId": ring_id, "callRoomId": ROOM, "reason": reason}, frame


def ring_update(ring_id: str, user_id: str, status: str) -> dict[str, Any]:
    return {
        "event": "webrtc:ring-updated",
        "data": {"ringId": ring_id, "callRoomId": ROOM, "userId": user_id, "status": status},
    }


async def next_frames(client: WsClient, count: int) -> dict[str, dict[str, Any]]:
    frames: dict[str, dict[str, Any]] = {}
    for _ in range(count):
        frame = await client.receive()
        assert frame["event"] not in frames, f"{frame['event']} twice: {frame}"
        frames[frame["event"]] = frame
    return frames


# --- a callee on both processes -------------------------------------------------------


async def test_a_callee_on_both_processes_is_rung_on_each_and_a_decline_on_one_ends_it_on_both(
    make_cluster: ClusterFactory,
) -> None:
    cluster = await make_cluster()
    alice = await cluster.connect(0, "alice")
    carol = await cluster.connect(1, "carol")
    await cluster.join(alice)
    await cluster.join(carol)
    await alice.expect("webrtc:participant-joined")
    bob_here, bob_there = await cluster.connect(0, "bob"), await cluster.connect(1, "bob")

    started = await ring(alice, [bob_here.user_id])

    await incoming(bob_here, started, alice)
    await incoming(bob_there, started, alice)
    late = await cluster.connect(1, "bob")  # opened while rung, on the other process
    await incoming(late, started, alice)
    for client in (alice, carol, bob_here, bob_there, late):
        await client.round_trip("rung")

    await bob_there.send("webrtc:ring-reply", {"ringId": started["ringId"], "response": "decline"}, id="d")

    frames = await next_frames(bob_there, 2)
    assert frames.keys() == {"webrtc:ack", "webrtc:ring-ended"}, frames
    assert frames["webrtc:ack"] == {"event": "webrtc:ack", "data": {"event": "webrtc:ring-reply"}, "id": "d"}
    await ring_ended(bob_here, started["ringId"], "declined")
    await ring_ended(late, started["ringId"], "declined")
    for member in (alice, carol):
        assert await member.receive() == ring_update(started["ringId"], bob_here.user_id, "declined")
    for client in (alice, carol, bob_here, bob_there, late):
        await client.round_trip("told-once")
    # Answered once, whichever process is asked again.
    for client in (bob_here, late):
        await client.send("webrtc:ring-reply", {"ringId": started["ringId"], "response": "accept"}, id="again")
        frame = await client.expect("webrtc:signaling-error")
        assert (frame["id"], frame["data"]["error"]) == ("again", "ring-not-found"), frame
    await cluster.rows_become(
        [(int(bob_here.user_id), "declined")],
        "SELECT callee_id, outcome FROM calls_callring WHERE ring_id = ?",
        started["ringId"],
    )


async def test_joining_on_the_other_process_accepts_the_ring_everywhere(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()
    alice = await cluster.connect(0, "alice")
    await cluster.join(alice)
    bob_here, bob_there = await cluster.connect(0, "bob"), await cluster.connect(1, "bob")
    started = await ring(alice, [bob_here.user_id])
    await incoming(bob_here, started, alice)
    await incoming(bob_there, started, alice)

    await cluster.join(bob_there)

    frames = await next_frames(bob_there, 2)
    assert frames.keys() == {"webrtc:ring-ended", "webrtc:ring-updated"}, frames
    await ring_ended(bob_here, started["ringId"], "accepted")
    assert (await alice.expect("webrtc:participant-joined"))["data"]["participant"]["socketId"] == bob_there.socket_id
    assert await alice.receive() == ring_update(started["ringId"], bob_here.user_id, "accepted")
    for client in (alice, bob_here, bob_there):
        await client.round_trip("accepted")


# --- the ringer's process dies --------------------------------------------------------


async def test_a_ring_outlives_its_ringers_killed_process_and_is_missed_at_its_timeout(
    make_cluster: ClusterFactory,
) -> None:
    """Tests that the ring's timeout is kept by presence, not by the ringer's process:
    daphne 0 (alice, the ringer, and one of bob's connections) is SIGKILLed right after
    the ring; daphne 1 ends it as ``missed`` at expiresAt, to bob's connection there and
    to carol, still in the call there. The call goes on (carol), so the ring must end as
    missed, not call-ended."""
    cluster = await make_cluster()
    alice = await cluster.connect(0, "alice")
    carol = await cluster.connect(1, "carol")
    await cluster.join(alice)
    await cluster.join(carol)
    await alice.expect("webrtc:participant-joined")
    doomed, bob = await cluster.connect(0, "bob"), await cluster.connect(1, "bob")
    started = await ring(alice, [bob.user_id])
    await incoming(doomed, started, alice)
    await incoming(bob, started, alice)

    cluster.servers[0].stop(signal.SIGKILL)

    expires_at = utc(started["expiresAt"])
    wait = (expires_at - dt.datetime.now(dt.UTC)).total_seconds() + TIMER_SECS + MARGIN_SECS
    try:
        await ring_ended(bob, started["ringId"], "missed", timeout=wait)
    except (AssertionError, TimeoutError) as exc:
        raise AssertionError(f"no ring-ended missed within {wait:.1f}s: {exc}\n{cluster.logs()}") from exc
    told_at = dt.datetime.now(dt.UTC)
    assert told_at >= expires_at - dt.timedelta(seconds=EARLY_SECS), (told_at, expires_at)
    # carol: the ring's end, and alice lost with her process (in either order).
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + PRESENCE_TTL_SECS + MARGIN_SECS
    while len(seen) < 2:
        frame = await carol.receive(timeout=max(0.1, deadline - time.monotonic()))
        assert frame["event"] not in seen, frame
        seen[frame["event"]] = frame
    assert seen["webrtc:ring-updated"] == ring_update(started["ringId"], bob.user_id, "missed")
    left = seen["webrtc:participant-left"]["data"]
    assert (left["participant"]["socketId"], left["reason"]) == (alice.socket_id, "lost"), left
    await bob.round_trip("after-missed")
    await carol.round_trip("after-missed")
    await cluster.rows_become(
        [(int(bob.user_id), "missed")],
        "SELECT callee_id, outcome FROM calls_callring WHERE ring_id = ?",
        started["ringId"],
    )


# --- moderation across processes ------------------------------------------------------


async def test_a_ban_set_through_one_process_refuses_joins_on_the_other(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()
    alice = await cluster.connect(0, "alice")
    bob = await cluster.connect(1, "bob")
    await cluster.join(alice)
    await cluster.join(bob)
    await alice.expect("webrtc:participant-joined")

    await alice.send("webrtc:kick", {"callRoomId": ROOM, "targetSocketId": bob.socket_id, "banSecs": 600}, id="k")

    frames = await next_frames(alice, 2)
    assert frames.keys() == {"webrtc:ack", "webrtc:participant-left"}, frames
    assert frames["webrtc:participant-left"]["data"]["reason"] == "kicked"
    kicked = await bob.expect("webrtc:kicked")
    assert kicked["data"]["by"]["socketId"] == alice.socket_id
    banned_until = kicked["data"]["bannedUntil"]
    for client in (bob, await cluster.connect(1, "bob"), await cluster.connect(0, "bob")):
        await client.send("webrtc:join-room", {"callRoomId": ROOM, "metadata": {"groupId": cluster.group_id}}, id="j")
        frame = await client.expect("webrtc:signaling-error")
        assert (frame["id"], frame["data"]["error"]) == ("j", "forbidden"), frame
        assert frame["data"]["details"] == {"bannedUntil": banned_until}, frame
    await alice.round_trip("after-ban")


async def test_a_lock_and_the_end_of_the_call_hold_across_processes(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()
    alice = await cluster.connect(0, "alice")
    bob = await cluster.connect(1, "bob")
    await cluster.join(alice)
    await cluster.join(bob)
    await alice.expect("webrtc:participant-joined")

    await alice.send("webrtc:lock-room", {"callRoomId": ROOM, "locked": True}, id="l")

    frames = await next_frames(alice, 2)
    assert frames.keys() == {"webrtc:ack", "webrtc:room-updated"}, frames
    assert await bob.receive() == frames["webrtc:room-updated"]
    carol = await cluster.connect(1, "carol")
    await carol.send("webrtc:join-room", {"callRoomId": ROOM, "metadata": {"groupId": cluster.group_id}}, id="j")
    frame = await carol.expect("webrtc:signaling-error")
    assert (frame["id"], frame["data"]["error"]) == ("j", "room-locked"), frame

    await alice.send("webrtc:end-call", {"callRoomId": ROOM}, id="e")

    frames = await next_frames(alice, 2)
    assert frames.keys() == {"webrtc:ack", "webrtc:call-ended"}, frames
    assert await bob.receive() == frames["webrtc:call-ended"]
    await bob.send("webrtc:ice-candidate", {"callRoomId": ROOM, "candidate": "candidate:x"}, id="ice")
    frame = await bob.expect("webrtc:signaling-error")
    assert (frame["id"], frame["data"]["error"]) == ("ice", "room-not-found"), frame
    joined = await cluster.join(carol)  # a new session, not locked
    assert joined["participantCount"] == 1 and joined["locked"] is False
    await alice.round_trip("ended")
    await cluster.rows_become(
        [(1,)],
        "SELECT COUNT(*) FROM calls_callroom WHERE room_id = ? AND ended_by_id IS NOT NULL",
        ROOM,
    )


# --- Redis loses its data after a kick or an end of the call --------------------------


async def test_a_participant_kicked_through_another_process_stays_out_after_redis_lost_its_data(
    make_cluster: ClusterFactory,
) -> None:
    """Tests that the kicked target is no member of the room any more: when Redis loses
    its data and each process puts back the members it serves, the target's process
    must not put it back (a ghost that later joiners would see and offer to)."""
    cluster = await make_cluster()
    alice = await cluster.connect(0, "alice")
    bob = await cluster.connect(1, "bob")
    await cluster.join(alice)
    await cluster.join(bob)
    await alice.expect("webrtc:participant-joined")
    await alice.send("webrtc:kick", {"callRoomId": ROOM, "targetSocketId": bob.socket_id}, id="k")
    await next_frames(alice, 2)
    await bob.expect("webrtc:kicked")

    await cluster.redis_lost_its_data()

    carol = await cluster.connect(0, "carol")
    joined = await cluster.join(carol)
    assert [p["socketId"] for p in joined["existingParticipants"]] == [alice.socket_id], joined
    await bob.round_trip("after-restore")


async def test_a_call_ended_through_another_process_is_not_brought_back_after_redis_lost_its_data(
    make_cluster: ClusterFactory,
) -> None:
    """Tests that a session ended by end-call stays ended: the processes of its former
    members must not put them back into it when Redis loses its data."""
    cluster = await make_cluster()
    alice = await cluster.connect(0, "alice")
    bob = await cluster.connect(1, "bob")
    created = await cluster.join(alice)
    await cluster.join(bob)
    await alice.expect("webrtc:participant-joined")
    await alice.send("webrtc:end-call", {"callRoomId": ROOM}, id="e")
    await next_frames(alice, 2)
    await bob.expect("webrtc:call-ended")

    await cluster.redis_lost_its_data()

    carol = await cluster.connect(0, "carol")
    joined = await cluster.join(carol)
    assert joined["participantCount"] == 1, joined
    assert joined["metadata"]["createdAt"] != created["metadata"]["createdAt"], "the ended session came back"
