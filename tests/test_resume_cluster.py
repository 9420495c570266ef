"""Tests of resume after a dropped connection (docs/protocol.md §6, §5 rule 4) with real
processes: three daphne processes sharing one Redis, clients on real sockets, drops made
by aborting the client's TCP connection (no close frame: the server sees 1006) or by
stopping a server process (SIGTERM: 1001, then resume elsewhere; SIGKILL: nobody left on
that process to say anything).

Silence is proven with sentinels, never by waiting for nothing: a request with an ``id``
whose reply must be a connection's next frame (``WsClient.round_trip``), and relays from
one participant to the next, across processes, that must be the next frame of both.
Where the resume grace has to run out, the test waits it out (plus a margin) before its
sentinels; each of those waits is named.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.redis_server import RedisServer
from tests.servers import (
    Server,
    ServerDatabase,
    metric_sum,
    prepare_database,
    restart_daphne,
    start_daphnes,
)
from tests.wsclient import ResumingClient, WsClient, wait_until

PRESENCE_TTL_SECS = 6  # survives a loaded two-core machine; the kill tests wait it out
GRACE_SECS = 4  # CALLS_RESUME_GRACE_SECS where the grace is waited out
LONG_GRACE_SECS = 20  # where it must not run out during the test
SHUTDOWN_TIMEOUT_SECS = 5
MARGIN_SECS = 3.0  # scheduling slack on a loaded two-core machine ("grace + about 1 s")
EARLY_SECS = 0.5  # how much sooner than the grace a departure may be told (clock, polling)
EXIT_MARGIN_SECS = 5.0
HISTORY_TIMEOUT_SECS = 10.0
POLL_SECS = 0.05  # how often /metrics and the database are asked while waiting on them
USERS = ("alice", "bob", "carol", "dave", "admin")
PARTICIPATION_TABLE = "calls_callparticipant"  # calls.models.CallParticipant


# --- the cluster ----------------------------------------------------------------------


@dataclass
class Cluster:
    servers: list[Server]
    redis: RedisServer
    database: ServerDatabase
    env: dict[str, str]
    tokens: dict[str, str]
    workdir: Path
    clients: list[WsClient] = field(default_factory=list)

    async def connect(self, server: int, user: str) -> WsClient:
        client = await WsClient.open(self.servers[server].ws, self.tokens[user])
        self.clients.append(client)
        assert client.resume_token, "webrtc:connected carries no resumeToken"
        return client

    async def resume(self, server: int, user: str, resume_token: str) -> tuple[WsClient, dict, dict]:
        """A connection of ``user`` to ``server`` presenting ``resume_token``: the client,
        its ``webrtc:connected`` frame and the frame after it."""
        client, connected, second = await WsClient.resume(self.servers[server].ws, self.tokens[user], resume_token)
        self.clients.append(client)
        return client, connected, second

    async def in_room(self, room: str, *seats: tuple[int, str]) -> list[WsClient]:
        """A client for each ``(server, user)`` of ``seats``, all joined to ``room`` in turn."""
        clients = [await self.connect(server, user) for server, user in seats]
        await join_all(room, clients)
        return clients

    async def drop(self, client: WsClient) -> float:
        """Abort ``client``'s TCP connection (no close frame: the server sees 1006) and wait
        until presence holds it parked; the moment of the drop (time.monotonic())."""
        await client.abort()
        dropped_at = time.monotonic()
        await self.parked(1)
        return dropped_at

    async def resumed(self, server: int, user: str, old: WsClient, room: str | None, *, missed: int) -> WsClient:
        """``user`` on ``server`` presenting ``old``'s resume token, resumed as ``old`` in
        ``room`` with ``missed`` frames (``assert_resumed``): the new client."""
        client, connected, second = await self.resume(server, user, old.resume_token)
        assert_resumed(connected, second, old, room, missed)
        return client

    async def refused(self, server: int, user: str, resume_token: str, old: WsClient, tag: str) -> WsClient:
        """``user`` on ``server`` presenting ``resume_token`` is refused the resume of ``old``
        (``assert_resume_failed``) and gets nothing else (a round trip tagged ``tag``)."""
        client, connected, second = await self.resume(server, user, resume_token)
        assert_resume_failed(connected, second, old, old.user_id)
        await client.round_trip(tag)
        return client

    async def metric(self, sample: str) -> float:
        return await asyncio.to_thread(metric_sum, self.servers, sample)

    async def parked(self, count: int, timeout: float = 10.0) -> None:
        """Wait until presence holds ``count`` parked participants: ``calls_parked`` is
        the count of the whole cluster (from presence), on every live process."""
        deadline = time.monotonic() + timeout
        while True:
            live = [s for s in self.servers if s.process.poll() is None]
            values = await asyncio.gather(*(asyncio.to_thread(s.metric, "calls_parked") for s in live))
            if all(value == count for value in values):
                return
            assert time.monotonic() < deadline, f"calls_parked is {values} on the live processes, not {count}"
            await asyncio.sleep(POLL_SECS)

    async def rows_become(self, expected: list[tuple], sql: str, *params: object) -> None:
        deadline = time.monotonic() + HISTORY_TIMEOUT_SECS
        while (rows := await asyncio.to_thread(self.database.rows, sql, *params)) != expected:
            assert time.monotonic() < deadline, f"{sql} gave {rows}, not {expected}"
            await asyncio.sleep(POLL_SECS)

    def logs(self) -> str:
        return "\n".join(f"--- {s.log_path.name}\n{s.log()[-3000:]}" for s in self.servers)


ClusterFactory = Callable[..., Awaitable[Cluster]]


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database with the demo users, copied for each test on SQLite
    (migrating takes seconds)."""
    path = tmp_path_factory.mktemp("template") / "db.sqlite3"
    prepare_database(ServerDatabase("sqlite", path).env())
    return path


@pytest.fixture
def sqlite_database(tmp_path: Path) -> ServerDatabase:
    """For the tests that need not run on PostgreSQL too."""
    return ServerDatabase("sqlite", tmp_path / "db.sqlite3")


@pytest.fixture
async def make_cluster(tmp_path: Path, sqlite_template: Path) -> AsyncIterator[ClusterFactory]:
    """``await make_cluster(database, **env)``: Redis and three daphne processes on
    ``database`` (migrated, with the demo users); everything stopped after the test,
    clients first."""
    made: list[Cluster] = []
    redis_servers: list[RedisServer] = []

    async def make(database: ServerDatabase, *, count: int = 3, **extra: str) -> Cluster:
        redis = RedisServer(tmp_path / "redis").start()
        redis_servers.append(redis)
        settings = {
            "REDIS_URL": redis.url,
            "CALLS_PRESENCE_TTL_SECS": str(PRESENCE_TTL_SECS),
            "CALLS_RESUME_GRACE_SECS": str(GRACE_SECS),
            "CALLS_SHUTDOWN_TIMEOUT_SECS": str(SHUTDOWN_TIMEOUT_SECS),
        }
        env = database.env(**{**settings, **extra})
        if database.url is None:
            shutil.copyfile(sqlite_template, database.path)
        else:
            await asyncio.to_thread(prepare_database, env)
        servers = await asyncio.to_thread(start_daphnes, env, [tmp_path / f"daphne{i}.log" for i in range(count)])
        cluster = Cluster(servers, redis, database, env, {}, tmp_path)
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


# --- frames ---------------------------------------------------------------------------


async def join_all(room: str, clients: list[WsClient]) -> None:
    """Join ``clients`` in turn; each one already in gets the newcomer's participant-joined."""
    for index, client in enumerate(clients):
        joined = await client.join(room)
        assert [p["socketId"] for p in joined["existingParticipants"]] == [c.socket_id for c in clients[:index]]
        for earlier in clients[:index]:
            frame = await earlier.expect("webrtc:participant-joined")
            assert frame["data"]["participant"]["socketId"] == client.socket_id


def candidate(room: str, target: WsClient, text: str) -> dict[str, Any]:
    return {"callRoomId": room, "targetSocketId": target.socket_id, "candidate": text}


async def acked(client: WsClient, event: str, data: dict[str, Any], id: str) -> None:
    """Send a relay with ``id``; its ``webrtc:ack`` must be the sender's next frame."""
    await client.send(event, data, id=id)
    frame = await client.receive()
    assert frame == {"event": "webrtc:ack", "data": {"event": event}, "id": id}, f"{id}: {frame}"


async def relayed(target: WsClient, sender: WsClient, event: str, key: str, value: Any) -> dict[str, Any]:
    """The target's next frame is ``event`` from ``sender`` carrying ``value``."""
    frame = await target.receive()
    assert frame["event"] == event, f"expected {event} {value!r}, got {frame}"
    assert (frame["data"]["fromSocketId"], frame["data"]["fromUserId"]) == (sender.socket_id, sender.user_id), frame
    assert frame["data"][key] == value, frame
    return frame


async def relay_sentinel(sender: WsClient, target: WsClient, room: str, tag: str) -> None:
    """A candidate from ``sender`` to ``target``: the next frame of both (its ack, and
    the candidate), so nothing else reached either before it."""
    await acked(sender, "webrtc:ice-candidate", candidate(room, target, tag), tag)
    await relayed(target, sender, "webrtc:ice-candidate", "candidate", tag)


async def quiet(room: str, clients: list[WsClient], tag: str) -> None:
    """Nothing reached ``clients`` (all in ``room``) but the sentinels: a round trip on
    each one's own process, then a ring of relays between them, across processes."""
    for index, client in enumerate(clients):
        await client.round_trip(f"{tag}-own-{index}")
    if len(clients) < 2:
        return
    for index, client in enumerate(clients):
        await relay_sentinel(client, clients[(index + 1) % len(clients)], room, f"{tag}-ring-{index}")


async def timed(client: WsClient, event: str, timeout: float) -> tuple[dict[str, Any], float]:
    frame = await client.expect(event, timeout=timeout)
    return frame, time.monotonic()


async def until(moment: float, why: str) -> None:
    """Let the clock reach ``moment`` (time.monotonic()), a deadline that has to pass,
    such as the end of the grace, before sentinels prove what did not happen; ``why``
    names the deadline."""
    assert why
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


def assert_resumed(connected: dict, second: dict, old: WsClient, room: str | None, missed: int) -> None:
    data = connected["data"]
    assert (data["socketId"], data["userId"]) == (old.socket_id, old.user_id), connected
    assert data["resumeToken"] and data["resumeToken"] != old.resume_token, connected
    assert second == {
        "event": "webrtc:resumed",
        "data": {"socketId": old.socket_id, "callRoomId": room, "missed": missed},
    }, second


def assert_resume_failed(connected: dict, second: dict, old: WsClient, user_id: str) -> None:
    data = connected["data"]
    assert data["socketId"] != old.socket_id, f"a refused resume kept the old socketId: {connected}"
    assert data["userId"] == user_id and data["resumeToken"], connected
    assert second["event"] == "webrtc:signaling-error", second
    assert second["data"]["error"] == "resume-failed", second
    assert second["data"]["message"] and second["data"]["timestamp"], second
    assert "id" not in second, second


# A participation's row: (left, leave_reason, resumes); with the socketId as parameter.
PARTICIPATION = f"SELECT left_at IS NOT NULL, leave_reason, resumes FROM {PARTICIPATION_TABLE} WHERE socket_id = ?"  # noqa: S608


# --- 1. resume mid-negotiation --------------------------------------------------------


async def test_a_dropped_connection_resumes_on_another_process_with_what_it_missed(
    make_cluster: ClusterFactory, database: ServerDatabase
) -> None:
    """Tests that a client whose TCP connection died mid-negotiation (no close frame)
    resumes on a third process as itself: same socketId, the four frames sent to it in
    the gap in order and nothing else, then live traffic; nobody in the room saw it go
    or come back, also after the grace; one participation row, with one resume."""
    cluster = await make_cluster(database)
    room = "resume-negotiation"
    # carol on the parking process: a sentinel through it
    alice, bob, carol = await cluster.in_room(room, (0, "alice"), (1, "bob"), (0, "carol"))

    dropped_at = await cluster.drop(alice)

    offer = {"type": "offer", "sdp": "v=0\r\na=x-gap:offer\r\n"}
    await acked(bob, "webrtc:offer", {"callRoomId": room, "targetSocketId": alice.socket_id, "offer": offer}, "b-1")
    for n in range(1, 4):
        await acked(bob, "webrtc:ice-candidate", candidate(room, alice, f"candidate:gap-{n}"), f"b-{n + 1}")

    resumed = await cluster.resumed(2, "alice", alice, room, missed=4)
    await relayed(resumed, bob, "webrtc:offer", "offer", offer)
    for n in range(1, 4):
        await relayed(resumed, bob, "webrtc:ice-candidate", "candidate", f"candidate:gap-{n}")
    await resumed.round_trip("after-missed")  # exactly those four
    await acked(bob, "webrtc:ice-candidate", candidate(room, resumed, "candidate:live"), "b-live")
    await relayed(resumed, bob, "webrtc:ice-candidate", "candidate", "candidate:live")
    answer = {"type": "answer", "sdp": "v=0\r\na=x-after:answer\r\n"}
    await acked(
        resumed, "webrtc:answer", {"callRoomId": room, "targetSocketId": bob.socket_id, "answer": answer}, "a-1"
    )
    await relayed(bob, resumed, "webrtc:answer", "answer", answer)
    await quiet(room, [resumed, bob, carol], "resumed")

    await cluster.parked(0)
    assert await cluster.metric("calls_resumes_total") == 1
    assert await cluster.metric("calls_resume_failures_total") == 0

    await until(dropped_at + GRACE_SECS + MARGIN_SECS, "the grace of the drop is over")
    await quiet(room, [resumed, bob, carol], "after-grace")  # no late participant-left
    await cluster.rows_become([(0, "", 1)], PARTICIPATION, alice.socket_id)


# --- 2. the grace runs out ------------------------------------------------------------


async def test_a_parked_participant_that_never_returns_leaves_once_after_the_grace(
    make_cluster: ClusterFactory, database: ServerDatabase
) -> None:
    """Tests that the room hears nothing when a connection drops, and that a participant
    that does not resume leaves as ``disconnected`` once the grace is over, told once to
    each of the others, and its participation row is closed so."""
    cluster = await make_cluster(database)
    room = "resume-expiry"
    alice, bob, carol = await cluster.in_room(room, (0, "alice"), (1, "bob"), (2, "carol"))

    dropped_at = await cluster.drop(alice)
    await quiet(room, [bob, carol], "parked")  # the others are told nothing at the drop

    await assert_left_once_after_grace(cluster, room, alice, [bob, carol], dropped_at, since_kill=None)
    await cluster.parked(0)
    await cluster.rows_become([(1, "disconnected", 0)], PARTICIPATION, alice.socket_id)


@pytest.mark.parametrize(
    "grace", [GRACE_SECS, PRESENCE_TTL_SECS + 4], ids=["grace-ends-before-the-lease", "grace-ends-after-the-lease"]
)
async def test_a_parked_participant_of_a_killed_process_leaves_once_as_disconnected(
    make_cluster: ClusterFactory, sqlite_database: ServerDatabase, grace: int
) -> None:
    """Tests that the end of the grace is told by a surviving process when the one that
    parked the participant was killed meanwhile: ``disconnected``, not ``lost``, once;
    with a grace that ends before the dead process's lease (nobody may wait for the
    reaper) and with one that ends after it (the reaper must leave a parked one alone)."""
    cluster = await make_cluster(sqlite_database, CALLS_RESUME_GRACE_SECS=str(grace))
    room = "resume-expiry-killed"
    alice, bob, carol = await cluster.in_room(room, (0, "alice"), (1, "bob"), (2, "carol"))

    dropped_at = await cluster.drop(alice)
    cluster.servers[0].stop(signal.SIGKILL)
    killed_at = time.monotonic()

    await assert_left_once_after_grace(
        cluster, room, alice, [bob, carol], dropped_at, since_kill=killed_at, grace=grace
    )
    await cluster.rows_become([(1, "disconnected", 0)], PARTICIPATION, alice.socket_id)


async def assert_left_once_after_grace(
    cluster: Cluster,
    room: str,
    gone: WsClient,
    others: list[WsClient],
    dropped_at: float,
    *,
    since_kill: float | None,
    grace: float = GRACE_SECS,
) -> None:
    """Every one of ``others`` is told ``gone`` left as ``disconnected`` once the grace
    is over, within about a second more; and nothing after that (a second departure, a
    ``lost`` once a killed process's lease has run out)."""
    told = await asyncio.gather(*(timed(other, "webrtc:participant-left", grace + MARGIN_SECS) for other in others))
    for frame, at in told:
        assert frame["data"]["reason"] == "disconnected", frame
        assert frame["data"]["participant"]["socketId"] == gone.socket_id, frame
        assert frame["data"]["callRoomId"] == room, frame
        assert at - dropped_at >= grace - EARLY_SECS, f"told {at - dropped_at:.2f}s after the drop, before the grace"
        assert at - dropped_at <= grace + MARGIN_SECS, f"told {at - dropped_at:.2f}s after the drop"
    end = dropped_at + grace + MARGIN_SECS
    if since_kill is not None:
        end = max(end, since_kill + PRESENCE_TTL_SECS + MARGIN_SECS)
    await until(end, "the grace, and a killed process's lease, are over")
    await quiet(room, others, "after-departure")


async def test_a_parked_participant_resumes_after_its_process_died(
    make_cluster: ClusterFactory, sqlite_database: ServerDatabase
) -> None:
    """Tests that a participant is parked in presence, not in the memory of the process
    that parked it (§6): that process is killed, its lease runs out, and the participant
    still resumes elsewhere with every frame sent to it in the gap, before and after the
    kill, and nobody was told anything."""
    cluster = await make_cluster(sqlite_database, CALLS_RESUME_GRACE_SECS=str(PRESENCE_TTL_SECS + 3 * int(MARGIN_SECS)))
    room = "resume-after-kill"
    alice, bob, carol = await cluster.in_room(room, (0, "alice"), (1, "bob"), (2, "carol"))

    await cluster.drop(alice)
    await acked(bob, "webrtc:ice-candidate", candidate(room, alice, "candidate:before-kill-1"), "b-1")
    await acked(carol, "webrtc:ice-candidate", candidate(room, alice, "candidate:before-kill-2"), "c-1")
    cluster.servers[0].stop(signal.SIGKILL)
    killed_at = time.monotonic()
    await acked(bob, "webrtc:ice-candidate", candidate(room, alice, "candidate:after-kill-1"), "b-2")
    await until(killed_at + PRESENCE_TTL_SECS + MARGIN_SECS, "the killed process's lease has run out")
    await acked(carol, "webrtc:ice-candidate", candidate(room, alice, "candidate:after-kill-2"), "c-2")

    resumed = await cluster.resumed(1, "alice", alice, room, missed=4)
    await relayed(resumed, bob, "webrtc:ice-candidate", "candidate", "candidate:before-kill-1")
    await relayed(resumed, carol, "webrtc:ice-candidate", "candidate", "candidate:before-kill-2")
    await relayed(resumed, bob, "webrtc:ice-candidate", "candidate", "candidate:after-kill-1")
    await relayed(resumed, carol, "webrtc:ice-candidate", "candidate", "candidate:after-kill-2")
    await quiet(room, [resumed, bob, carol], "resumed")


# --- 3. the buffer overflows ----------------------------------------------------------


async def test_a_full_resume_buffer_keeps_the_newest_frames_and_counts_the_rest(
    make_cluster: ClusterFactory, sqlite_database: ServerDatabase
) -> None:
    cluster = await make_cluster(sqlite_database, CALLS_RESUME_BUFFER="5", CALLS_RESUME_GRACE_SECS=str(LONG_GRACE_SECS))
    room = "resume-overflow"
    alice, bob = await cluster.in_room(room, (0, "alice"), (1, "bob"))

    await cluster.drop(alice)
    for n in range(8):
        await acked(bob, "webrtc:ice-candidate", candidate(room, alice, f"candidate:{n}"), f"b-{n}")

    resumed = await cluster.resumed(2, "alice", alice, room, missed=5)
    for n in range(3, 8):
        await relayed(resumed, bob, "webrtc:ice-candidate", "candidate", f"candidate:{n}")
    await resumed.round_trip("after-missed")
    await relay_sentinel(bob, resumed, room, "live")
    await quiet(room, [resumed, bob], "resumed")
    dropped = await cluster.metric("calls_resume_buffer_dropped_total")
    assert dropped >= 3, f"calls_resume_buffer_dropped_total sums to {dropped}"


# --- 4. refused resumes ---------------------------------------------------------------


async def test_a_used_token_is_refused_and_the_new_one_still_resumes(
    make_cluster: ClusterFactory, sqlite_database: ServerDatabase
) -> None:
    cluster = await make_cluster(sqlite_database, CALLS_RESUME_GRACE_SECS=str(LONG_GRACE_SECS))
    room = "resume-reuse"
    alice, bob, carol = await cluster.in_room(room, (0, "alice"), (1, "bob"), (2, "carol"))

    await cluster.drop(alice)
    first = await cluster.resumed(1, "alice", alice, room, missed=0)
    await quiet(room, [first, bob, carol], "first-resume")

    await cluster.drop(first)  # dropped again
    await acked(bob, "webrtc:ice-candidate", candidate(room, first, "candidate:gap"), "b-gap")
    # The first token, used: a newcomer in no room (no missed frames, no room).
    await cluster.refused(2, "alice", alice.resume_token, alice, "stale")
    await quiet(room, [bob, carol], "stale")  # and nobody saw a participant-joined

    again = await cluster.resumed(2, "alice", first, room, missed=1)
    await relayed(again, bob, "webrtc:ice-candidate", "candidate", "candidate:gap")
    await quiet(room, [again, bob, carol], "second-resume")
    assert await cluster.metric("calls_resumes_total") == 2
    assert await cluster.metric("calls_resume_failures_total") == 1


async def test_another_users_token_and_a_garbage_token_are_refused(
    make_cluster: ClusterFactory, sqlite_database: ServerDatabase
) -> None:
    cluster = await make_cluster(sqlite_database, CALLS_RESUME_GRACE_SECS=str(LONG_GRACE_SECS))
    room = "resume-foreign"
    alice, carol = await cluster.in_room(room, (0, "alice"), (1, "carol"))

    await cluster.drop(alice)
    bob, connected, second = await cluster.resume(2, "bob", alice.resume_token)  # bob's credential
    assert connected["data"]["userId"] != alice.user_id
    assert_resume_failed(connected, second, alice, connected["data"]["userId"])
    await bob.round_trip("bob")
    await cluster.refused(1, "alice", "not-a-resume-token", alice, "garbage")
    await quiet(room, [carol], "refused")

    # Neither refusal spent alice's token, or took her place.
    resumed = await cluster.resumed(2, "alice", alice, room, missed=0)
    await quiet(room, [resumed, carol], "resumed")


async def test_a_token_is_refused_once_the_grace_is_over(
    make_cluster: ClusterFactory, sqlite_database: ServerDatabase
) -> None:
    cluster = await make_cluster(sqlite_database)
    room = "resume-expired"
    alice, bob, carol = await cluster.in_room(room, (0, "alice"), (1, "bob"), (2, "carol"))

    await cluster.drop(alice)
    for other in (bob, carol):  # the grace is over
        left = await other.expect("webrtc:participant-left", timeout=GRACE_SECS + MARGIN_SECS)
        assert left["data"]["reason"] == "disconnected", left
    late = await cluster.refused(2, "alice", alice.resume_token, alice, "late")
    await quiet(room, [bob, carol], "late")  # the refused one is in no room
    joined = await late.join(room)  # and joins as a newcomer
    assert [p["socketId"] for p in joined["existingParticipants"]] == [bob.socket_id, carol.socket_id]
    for other in (bob, carol):
        assert (await other.expect("webrtc:participant-joined"))["data"]["participant"]["socketId"] == late.socket_id


async def test_two_concurrent_resumes_of_one_token_on_two_processes_make_one_winner(
    make_cluster: ClusterFactory, sqlite_database: ServerDatabase
) -> None:
    cluster = await make_cluster(sqlite_database, CALLS_RESUME_GRACE_SECS=str(LONG_GRACE_SECS))
    room = "resume-race"
    alice, bob, carol = await cluster.in_room(room, (0, "alice"), (1, "bob"), (2, "carol"))

    await cluster.drop(alice)
    await acked(bob, "webrtc:ice-candidate", candidate(room, alice, "candidate:gap"), "b-gap")
    attempts = await asyncio.gather(
        cluster.resume(1, "alice", alice.resume_token), cluster.resume(2, "alice", alice.resume_token)
    )
    winners = [a for a in attempts if a[1]["data"]["socketId"] == alice.socket_id]
    losers = [a for a in attempts if a[1]["data"]["socketId"] != alice.socket_id]
    assert (len(winners), len(losers)) == (1, 1), [a[1:] for a in attempts]
    (winner, connected, second), (loser, lost_connected, lost_second) = winners[0], losers[0]
    assert_resumed(connected, second, alice, room, missed=1)
    assert_resume_failed(lost_connected, lost_second, alice, alice.user_id)
    await relayed(winner, bob, "webrtc:ice-candidate", "candidate", "candidate:gap")
    await loser.round_trip("loser")
    await quiet(room, [winner, bob, carol], "race")


# --- 6. a rolling restart -------------------------------------------------------------

ROLLING_PARTICIPANTS = 16
ROLLING_RATE = 5.0  # relays a second from each participant
ROLLING_GRACE_SECS = 10
ROLLING_TTL_SECS = 10  # three daphne start-ups load the two cores more than any other test
ROLLING_BACKOFF_SECS = 0.5
ROLLING_LIMIT_SECS = 110.0


class RollingParticipant:
    """One participant of the rolling restart: a ``ResumingClient`` that sends candidates
    to the others in turn, each with an ``id`` and a sequence number per pair, and notes
    what it sent, what was acknowledged and what it received."""

    def __init__(self, index: int, urls: list[str], token: str, changed: asyncio.Event) -> None:
        self.index = index
        self.client = ResumingClient(urls, token, backoff=ROLLING_BACKOFF_SECS, on_frame=self.on_frame, changed=changed)
        self.sockets: list[str] = []  # every participant's socketId, by index
        self.sent: dict[int, list[int]] = {}  # target → sequence numbers sent
        self.acked: dict[int, set[int]] = {}  # target → sequence numbers acknowledged
        self.received: dict[int, list[int]] = {}  # sender → sequence numbers, as they came
        self.replies: dict[str, dict[str, Any]] = {}  # other requests' replies, by id
        self.membership: list[dict[str, Any]] = []  # participant-joined/left after the joins
        self.errors: list[dict[str, Any]] = []
        self.foreign: list[dict[str, Any]] = []
        self.steady = False
        self.stop = False

    def on_frame(self, frame: dict[str, Any]) -> None:
        event, data, id = frame["event"], frame["data"], frame.get("id")
        if isinstance(id, str) and id.startswith("r:"):
            if event != "webrtc:ack":
                self.errors.append(frame)
                return
            _, _, target, seq = id.split(":")
            self.acked.setdefault(int(target), set()).add(int(seq))
        elif id is not None:
            self.replies[str(id)] = frame
        elif event == "webrtc:ice-candidate":
            kind, sender, target, seq = data["candidate"].split()
            if kind != "relay" or int(target) != self.index or data["fromSocketId"] != self.sockets[int(sender)]:
                self.foreign.append(frame)
            else:
                self.received.setdefault(int(sender), []).append(int(seq))
        elif event in ("webrtc:participant-joined", "webrtc:participant-left"):
            if self.steady:
                self.membership.append(frame)
        elif event == "webrtc:signaling-error":
            self.errors.append(frame)
        else:
            self.foreign.append(frame)

    async def request(self, event: str, data: dict[str, Any], id: str) -> dict[str, Any]:
        assert await self.client.send(event, data, id=id), f"participant {self.index} could not send {id}"
        await wait_until(self.client.changed, lambda: id in self.replies, 10.0, f"the reply to {id}")
        return self.replies.pop(id)

    async def send_relays(self, room: str) -> None:
        targets = [j for j in range(len(self.sockets)) if j != self.index]
        turn = self.index  # participants start on different targets
        while not self.stop:
            await asyncio.sleep(1 / ROLLING_RATE)  # the pace of the workload
            if not self.client.up.is_set():
                continue  # reconnecting: nothing is sent meanwhile
            target = targets[turn % len(targets)]
            turn += 1
            sent = self.sent.setdefault(target, [])
            seq = len(sent)
            sent.append(seq)
            await self.client.send(
                "webrtc:ice-candidate",
                {"callRoomId": room, "targetSocketId": self.sockets[target],
                 "candidate": f"relay {self.index} {target} {seq}"},
                id=f"r:{self.index}:{target}:{seq}",
            )  # fmt: skip

    def acked_count(self) -> int:
        return sum(len(seqs) for seqs in self.acked.values())


@dataclass
class Rolling:
    cluster: Cluster
    participants: list[RollingParticipant]
    changed: asyncio.Event
    urls: list[str]

    async def steady(self, acks: int) -> None:
        """Each participant gets ``acks`` more relays acknowledged."""
        base = [p.acked_count() for p in self.participants]
        await wait_until(
            self.changed,
            lambda: all(p.acked_count() >= b + acks for p, b in zip(self.participants, base, strict=True)),
            20.0,
            f"{acks} more acknowledged relays from everyone",
        )

    async def restart(self, k: int) -> str:
        """SIGTERM process ``k``, wait for its exit, start a new one on its port, and
        wait until its clients have resumed elsewhere; a line of timings."""
        on_k = [p for p in self.participants if p.client.url == self.urls[k]]
        assert on_k, f"nobody on process {k}"
        before = {p.index: len(p.client.outages) for p in self.participants}
        old = self.cluster.servers[k]
        term_at = time.monotonic()
        old.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(old.process.wait, SHUTDOWN_TIMEOUT_SECS + EXIT_MARGIN_SECS)
        exited_at = time.monotonic()
        log_path = self.cluster.workdir / f"daphne{k}-restarted.log"
        self.cluster.servers[k] = await asyncio.to_thread(restart_daphne, old, self.cluster.env, log_path)
        serving_at = time.monotonic()

        def resumed_or_failed() -> bool:
            if any(p.client.failed.is_set() for p in self.participants):
                return True
            return all(len(p.client.outages) == before[p.index] + 1 and p.client.outages[-1].gap for p in on_k)

        await wait_until(self.changed, resumed_or_failed, 20.0, f"the clients of process {k} resumed")
        failed = [(p.index, p.client.outages[-1:]) for p in self.participants if p.client.failed.is_set()]
        assert not failed, f"resume failed: {failed}\n{self.cluster.logs()}"
        moved = sorted(p.index for p in self.participants if len(p.client.outages) != before[p.index])
        assert moved == sorted(p.index for p in on_k), "only the restarted process's clients moved"
        outages = [p.client.outages[-1] for p in on_k]
        assert all(o.close_code == 1001 for o in outages), outages
        gaps = [o.gap or 0.0 for o in outages]
        return (
            f"process {k}: {len(on_k)} clients, exit {exited_at - term_at:.2f}s, serving again "
            f"{serving_at - term_at:.2f}s, resumed {min(gaps):.2f}-{max(gaps):.2f}s after their close"
        )

    def joins_told(self) -> bool:
        count = len(self.participants)
        return all(
            sum(f["event"] == "webrtc:participant-joined" for f in p.client.frames) == count - 1 - p.index
            for p in self.participants
        )

    def missing(self) -> dict[str, list[int]]:
        """Acknowledged relays not (yet) received, by ``sender→target``."""
        gaps = {
            f"{p.index}→{q.index}": sorted(p.acked.get(q.index, set()) - set(q.received.get(p.index, ())))
            for p in self.participants
            for q in self.participants
            if p is not q
        }
        return {pair: seqs for pair, seqs in gaps.items() if seqs}

    async def wait_delivered(self, what: str) -> None:
        """Wait until every acknowledged relay has arrived; if not, say which did not,
        where their sender and target were, and what the processes logged."""
        try:
            await wait_until(self.changed, lambda: not self.missing(), 15.0, what)
        except AssertionError as exc:
            where = {p.index: [(o.from_url, o.to_url, o.close_code, o.missed) for o in p.client.outages]
                     for p in self.participants}  # fmt: skip
            raise AssertionError(f"{exc}; missing {self.missing()}; outages {where}\n{self.cluster.logs()}") from None


async def test_a_rolling_restart_is_invisible_to_a_full_room(
    make_cluster: ClusterFactory, sqlite_database: ServerDatabase
) -> None:
    """Tests that restarting each of three processes in turn (SIGTERM, exit, a new one on
    the same port) under a 16-person room in steady signaling loses nothing: every
    acknowledged relay arrives exactly once and in order per sender and target, nobody
    sees anyone leave or join, and every client resumes as itself."""
    started = time.monotonic()
    cluster = await make_cluster(
        sqlite_database,
        CALLS_RESUME_GRACE_SECS=str(ROLLING_GRACE_SECS),
        CALLS_PRESENCE_TTL_SECS=str(ROLLING_TTL_SECS),
    )
    room = "rolling"
    urls = [server.ws for server in cluster.servers]
    changed = asyncio.Event()
    participants = [
        RollingParticipant(i, urls[i % 3:] + urls[: i % 3], cluster.tokens[USERS[i % len(USERS)]], changed)
        for i in range(ROLLING_PARTICIPANTS)
    ]  # fmt: skip
    rolling = Rolling(cluster, participants, changed, urls)
    senders: list[asyncio.Task[None]] = []
    try:
        for p in participants:
            await p.client.start()
            joined = await p.request("webrtc:join-room", {"callRoomId": room}, id=f"join-{p.index}")
            assert joined["event"] == "webrtc:room-joined", joined
        sockets = [p.client.socket_id for p in participants]
        for p in participants:
            p.sockets = sockets
        await wait_until(changed, rolling.joins_told, 10.0, "everyone told of every later joiner")
        for p in participants:
            p.steady = True
        senders = [asyncio.create_task(p.send_relays(room)) for p in participants]

        await rolling.steady(3)
        timings = []
        for k in range(3):
            timings.append(await rolling.restart(k))
            await rolling.steady(3)
        last_close = max(o.closed_at for p in participants for o in p.client.outages)
        await rolling.steady(5)
        for p in participants:
            p.stop = True
        await asyncio.gather(*senders)
        for p in participants:  # every reply to what was sent before it has come
            reply = await p.request("webrtc:leave-room", {"callRoomId": "sentinel-room"}, id=f"drain-{p.index}")
            assert reply["data"]["error"] == "not-in-room", reply
        await rolling.wait_delivered("every acknowledged relay delivered")

        await until(last_close + ROLLING_GRACE_SECS + MARGIN_SECS, "every grace of the restarts is over")
        for p in participants:  # a last round, across processes: the readers are up to date
            target = participants[(p.index + 1) % len(participants)]
            seq = len(p.sent.setdefault(target.index, []))
            p.sent[target.index].append(seq)
            reply = await p.request(
                "webrtc:ice-candidate",
                {"callRoomId": room, "targetSocketId": target.client.socket_id,
                 "candidate": f"relay {p.index} {target.index} {seq}"},
                id=f"last-{p.index}",
            )  # fmt: skip
            assert reply["event"] == "webrtc:ack", reply
            p.acked.setdefault(target.index, set()).add(seq)
        await rolling.wait_delivered("the last round delivered")

        total_acked = sum(p.acked_count() for p in participants)
        for p in participants:
            assert p.client.socket_id == sockets[p.index]
            assert not p.membership, f"participant {p.index} saw {p.membership}"
            assert not p.errors, f"participant {p.index} got {p.errors}"
            assert not p.foreign, f"participant {p.index} got {p.foreign}"
            assert p.client.crash is None, repr(p.client.crash)
            for q in participants:
                if q is p:
                    continue
                got = q.received.get(p.index, [])
                assert got == sorted(set(got)), f"{p.index}→{q.index} out of order or twice: {got}"
                assert set(got) <= set(p.sent.get(q.index, [])), f"{p.index}→{q.index} never sent: {got}"
                missing = p.acked.get(q.index, set()) - set(got)
                assert not missing, f"{p.index}→{q.index} acknowledged, never delivered: {sorted(missing)}"
        elapsed = time.monotonic() - started
        print(f"\nrolling restart, {ROLLING_PARTICIPANTS} participants, {total_acked} acknowledged relays, "
              f"{elapsed:.1f}s:\n  " + "\n  ".join(timings))  # fmt: skip
        assert elapsed < ROLLING_LIMIT_SECS
    finally:
        for p in participants:
            p.stop = True
        await asyncio.gather(*senders, return_exceptions=True)
        await asyncio.gather(*(p.client.stop() for p in participants), return_exceptions=True)
