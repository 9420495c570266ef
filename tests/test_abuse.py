"""Tests that the abuses of a hostile client fail against real daphne processes sharing
one Redis and one database, each on SQLite and on PostgreSQL: a group's call cannot be
squatted (docs/protocol.md §5 rule 1), one user holds at most
``CALLS_MAX_CONNECTIONS_PER_USER`` connections (§2), a join flood delays nobody else's
handshake (§5 rules 1 and 9), a history backlog makes no live process look dead (§5
rule 4), credentials that end end their connections (§2), and logins are throttled
(§11)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import http.client
import itertools
import json
import math
import signal
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
import websockets
from psycopg import sql

from tests.postgres_server import PostgresServer
from tests.redis_server import RedisServer
from tests.servers import Server, ServerDatabase, prepare_database, server_env, start_daphnes

PRESENCE_TTL_SECS = 3  # the smallest the settings allow, as in tests/test_multiprocess.py
RECEIVE_TIMEOUT_SECS = 5.0
SILENCE_SECS = 0.3  # how long "nothing more arrives" is watched for
RETRY_INTERVAL_SECS = 0.05
CREDENTIAL_DEADLINE_SECS = 5.0  # deactivations and removals take effect within this (§2)
EXPIRY_GRACE_SECS = 2.0  # an expired connection is closed within this after authExpiresAt
ACCESS_TTL_SECS = 3
MAX_CONNECTIONS_PER_USER = 10  # the defaults of docs/protocol.md §7
JOINS_PER_MINUTE = 30
LOGIN_FAILURES_PER_ADDRESS = 20
LOGIN_FAILURES_PER_USERNAME = 10
LOGIN_WINDOW_SECS = 600
FLOOD_SOCKETS = 8
FLOOD_REPLY_TIMEOUT_SECS = 0.25  # a frame dropped by the rate limit gets no reply
HANDSHAKE_PROBES = 20
HANDSHAKE_P99_LIMIT_SECS = 1.0
PASSWORD = "demo-pass-123"  # the demo users' (accounts/management/commands/seed_demo.py)

UNAUTHENTICATED = 4401
TOO_MANY_CONNECTIONS = 4409
GOING_AWAY = 1001


# ---------------------------------------------------------------------------
# Databases: migrated once per kind, copied for each test
# ---------------------------------------------------------------------------


class DatabaseTemplates:
    """A migrated database with the demo users, made once per module and kind and copied
    into each test's empty one: migrating is most of a cluster's start-up."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.sqlite_template: Path | None = None
        self.postgres: PostgresServer | None = None
        self.postgres_template: str | None = None

    def fill(self, database: ServerDatabase, postgres: PostgresServer | None) -> None:
        if database.url is None:
            if self.sqlite_template is None:
                path = self.workdir / "template.sqlite3"
                prepare_database(server_env(path))
                self.sqlite_template = path
            with (
                closing(sqlite3.connect(self.sqlite_template)) as source,
                closing(sqlite3.connect(database.path)) as copy,
            ):
                source.backup(copy)
            return
        assert postgres is not None
        if self.postgres_template is None:
            name = postgres.create_database("abuse_template")
            self.postgres, self.postgres_template = postgres, name
            prepare_database(server_env(self.workdir / "unused.sqlite3", database_url=postgres.url(name)))
        target = database.url.rsplit("/", 1)[1]
        postgres.drop_database(target)
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(target), sql.Identifier(self.postgres_template)
        )
        deadline = time.monotonic() + RECEIVE_TIMEOUT_SECS
        while True:
            try:
                postgres.execute(statement)
                return
            except psycopg.errors.ObjectInUse:  # migrate's connection is still closing
                assert time.monotonic() < deadline, "the template database stayed in use"
                time.sleep(RETRY_INTERVAL_SECS)

    def drop(self) -> None:
        if self.postgres is not None and self.postgres_template is not None:
            self.postgres.drop_database(self.postgres_template)


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseTemplates]:
    made = DatabaseTemplates(tmp_path_factory.mktemp("abuse-templates"))
    try:
        yield made
    finally:
        made.drop()


# ---------------------------------------------------------------------------
# A cluster: Redis, the shared database and N daphne processes
# ---------------------------------------------------------------------------


@dataclass
class Cluster:
    servers: list[Server]
    redis: RedisServer
    database: ServerDatabase
    signing_key: str
    tokens: dict[str, str] = field(default_factory=dict)

    def ws(self, index: int) -> str:
        return self.servers[index].ws

    def token(self, user: str) -> str:
        """An access token of ``user`` such as ``POST /api/auth/token/`` answers
        (simplejwt's claims, signed with the servers' key, valid for the default 900 s),
        made here: a login costs the servers a password hash, half a second of CPU."""
        if user not in self.tokens:
            [(user_id,)] = self.rows("SELECT id FROM accounts_user WHERE username = ?", user)
            now = int(time.time())
            claims = {"token_type": "access", "exp": now + 900, "iat": now, "jti": uuid.uuid4().hex,
                      "user_id": str(user_id)}  # fmt: skip
            self.tokens[user] = jwt.encode(claims, self.signing_key, algorithm="HS256")
        return self.tokens[user]

    def rows(self, query: str, *params: object) -> list[tuple]:
        return self.database.rows(query, *params)

    def execute(self, statement: str, *params: object) -> None:
        """Run one write in the shared database and commit it, as an operator would."""
        if self.database.url is None:
            with closing(sqlite3.connect(self.database.path, timeout=20, isolation_level=None)) as db:
                db.execute(statement, params)
            return
        with psycopg.connect(self.database.url, autocommit=True, connect_timeout=10) as db:
            db.execute(statement.replace("?", "%s"), params)

    def group_id(self) -> int:
        [(group_id,)] = self.rows("SELECT id FROM chatgroups_group WHERE name = ?", "Demo team")
        return group_id

    @contextmanager
    def history_blocked(self) -> Iterator[None]:
        """Hold the history tables against every writer until the block ends: SQLite's
        write lock (``BEGIN IMMEDIATE``) or PostgreSQL's ``ACCESS EXCLUSIVE`` table locks.
        Readers of other tables (token and user lookups) go on."""
        if self.database.url is None:
            with closing(sqlite3.connect(self.database.path, timeout=20, isolation_level=None)) as db:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield
                finally:
                    db.execute("ROLLBACK")
            return
        with psycopg.connect(self.database.url, connect_timeout=10) as db:
            db.execute("LOCK TABLE calls_callroom, calls_callparticipant IN ACCESS EXCLUSIVE MODE")
            try:
                yield
            finally:
                db.rollback()

    async def rows_become(self, expected: list[tuple], query: str, *params: object) -> None:
        deadline = time.monotonic() + RECEIVE_TIMEOUT_SECS
        while (rows := self.rows(query, *params)) != expected:
            assert time.monotonic() < deadline, f"{query} gave {rows}, not {expected}"
            await asyncio.sleep(RETRY_INTERVAL_SECS)


ClusterFactory = Callable[..., Cluster]


@pytest.fixture
def start_cluster(
    request: pytest.FixtureRequest, tmp_path: Path, database: ServerDatabase, templates: DatabaseTemplates
) -> Iterator[ClusterFactory]:
    """``start_cluster(processes, **env)``: Redis, the test's database with the demo users
    and that many daphne processes; every one stopped after the test, even a failed one."""
    redis = RedisServer(tmp_path / "redis")
    servers: list[Server] = []

    def start(processes: int = 3, **extra_env: str) -> Cluster:
        postgres = request.getfixturevalue("postgres_server") if database.url is not None else None
        templates.fill(database, postgres)
        redis.start()
        env = database.env(REDIS_URL=redis.url, CALLS_PRESENCE_TTL_SECS=str(PRESENCE_TTL_SECS), **extra_env)
        servers.extend(start_daphnes(env, [tmp_path / f"daphne{i}.log" for i in range(processes)]))
        return Cluster(servers, redis, database, env["SECRET_KEY"])

    try:
        yield start
    finally:
        for server in servers:
            server.stop(signal.SIGKILL)
        redis.stop()


# ---------------------------------------------------------------------------
# Websocket peers whose frames are read as they arrive
# ---------------------------------------------------------------------------


class Peer:
    """A client of ``/ws/calls/`` whose frames are read as they arrive, so that a test
    can wait, with a deadline, for one frame among others or for the close."""

    _ids = itertools.count(1)

    def __init__(self, connection: websockets.ClientConnection, server: int) -> None:
        self.connection = connection
        self.server = server
        self.socket_id = ""
        self.connected: dict[str, Any] = {}
        self.inbox: list[dict[str, Any]] = []  # frames not taken yet, in arrival order
        self.frames: list[dict[str, Any]] = []  # every frame, for failure messages
        self.closed = asyncio.Event()
        self.closed_at = 0.0  # time.time() of the close
        self._arrival = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for text in self.connection:
                frame = json.loads(text)
                self.inbox.append(frame)
                self.frames.append(frame)
                self._wake()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed_at = time.time()
            self.closed.set()
            self._wake()

    def _wake(self) -> None:
        arrival, self._arrival = self._arrival, asyncio.Event()
        arrival.set()

    @property
    def close_code(self) -> int | None:
        return self.connection.close_code if self.closed.is_set() else None

    async def _wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any] | None:
        """The first frame not taken yet that matches, taken; ``None`` if the connection
        closed without one. Fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for index, frame in enumerate(self.inbox):
                if predicate(frame):
                    return self.inbox.pop(index)
            if self.closed.is_set():
                return None
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no such frame within {timeout:.1f}s; waiting: {self.inbox}"
            arrival = self._arrival
            try:
                await asyncio.wait_for(arrival.wait(), remaining)
            except TimeoutError:
                pass

    async def take(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = RECEIVE_TIMEOUT_SECS
    ) -> dict[str, Any]:
        frame = await self._wait(predicate, timeout)
        assert frame is not None, f"closed with {self.close_code} first; waiting: {self.inbox}"
        return frame

    async def event(self, name: str, timeout: float = RECEIVE_TIMEOUT_SECS) -> dict[str, Any]:
        return await self.take(lambda frame: frame["event"] == name, timeout)

    async def handshake(self, timeout: float = RECEIVE_TIMEOUT_SECS) -> bool:
        """Wait for ``webrtc:connected`` (``True``) or a close before it (``False``)."""
        frame = await self._wait(lambda frame: frame["event"] == "webrtc:connected", timeout)
        if frame is None:
            return False
        self.connected = frame["data"]
        self.socket_id = frame["data"]["socketId"]
        return True

    async def send(self, event: str, data: dict[str, Any], id: str | None = None) -> None:
        frame: dict[str, Any] = {"event": event, "data": data}
        if id is not None:
            frame["id"] = id
        await self.connection.send(json.dumps(frame))

    async def request(self, event: str, data: dict[str, Any], timeout: float = RECEIVE_TIMEOUT_SECS) -> dict[str, Any]:
        """Send with an ``id`` and return the reply that carries it back."""
        request_id = f"r{next(self._ids)}"
        await self.send(event, data, request_id)
        return await self.take(lambda frame: frame.get("id") == request_id, timeout)

    async def join(self, room: str, **extra: Any) -> dict[str, Any]:
        reply = await self.request("webrtc:join-room", {"callRoomId": room, **extra})
        assert reply["event"] == "webrtc:room-joined", reply
        return reply["data"]

    async def round_trip(self) -> None:
        """A request answered by this connection's own process: it is still served."""
        reply = await self.request("webrtc:leave-room", {"callRoomId": "sentinel-room"})
        assert (reply["event"], reply["data"]["error"]) == ("webrtc:signaling-error", "not-in-room"), reply

    async def wait_closed(self, timeout: float) -> int | None:
        async with asyncio.timeout(timeout):
            await self.closed.wait()
        return self.close_code

    async def expect_silence(self, secs: float = SILENCE_SECS) -> None:
        """Nothing arrives, nor waits untaken, for ``secs``."""
        deadline = time.monotonic() + secs
        while (remaining := deadline - time.monotonic()) > 0 and not self.inbox:
            arrival = self._arrival
            try:
                await asyncio.wait_for(arrival.wait(), remaining)
            except TimeoutError:
                pass
        assert not self.inbox, f"unexpected frames {self.inbox}; all frames: {self.frames}"

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.connection.close(), RECEIVE_TIMEOUT_SECS)
        finally:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


OpenPeer = Callable[..., Any]


@pytest.fixture
async def open_peer() -> AsyncIterator[OpenPeer]:
    """``await open_peer(cluster, server, user)`` → a ``Peer`` that got ``webrtc:connected``
    (``admitted=False``: whatever the handshake ended with); all closed after the test."""
    opened: list[Peer] = []

    async def _connect(cluster: Cluster, server: int, user: str, *, admitted: bool | None = True) -> Peer:
        connection = await websockets.connect(
            f"{cluster.ws(server)}?token={cluster.token(user)}", open_timeout=RECEIVE_TIMEOUT_SECS
        )
        peer = Peer(connection, server)
        opened.append(peer)
        got_in = await peer.handshake()
        if admitted is not None:
            assert got_in == admitted, f"admitted={got_in}, closed with {peer.close_code}"
        return peer

    yield _connect
    for peer in opened:
        try:
            await peer.close()
        except Exception:  # noqa: S110 - already closed, or its server is gone
            pass


def about(socket_id: str) -> Callable[[dict[str, Any]], bool]:
    """Frames that name this socket: relayed from it, or telling of it."""

    def names(frame: dict[str, Any]) -> bool:
        data = frame.get("data") or {}
        return socket_id in (data.get("fromSocketId"), (data.get("participant") or {}).get("socketId"))

    return names


def left(socket_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda frame: frame["event"] == "webrtc:participant-left" and about(socket_id)(frame)


async def join_all(peers: list[Peer], room: str, **extra: Any) -> None:
    """Each joins in turn; each is told of every later joiner."""
    for count, peer in enumerate(peers, 1):
        joined = await peer.join(room, **extra)
        assert joined["participantCount"] == count, joined
    for index, peer in enumerate(peers):
        for later in peers[index + 1 :]:
            await peer.take(lambda frame, s=later.socket_id: frame["event"] == "webrtc:participant-joined"
                            and frame["data"]["participant"]["socketId"] == s)  # fmt: skip


# ---------------------------------------------------------------------------
# A join flood: one user's sockets cycling rooms as fast as they are answered
# ---------------------------------------------------------------------------


@dataclass
class Flood:
    sent: int = 0
    rooms: int = 0  # joins answered room-joined: rooms created
    rate_limited: int = 0
    unanswered: int = 0  # dropped by the frame rate limit
    other: list[str] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def cycle(self, connection: websockets.ClientConnection, index: int, stop: asyncio.Event) -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            request_id = f"f{index}-{n}"
            join = {"event": "webrtc:join-room", "data": {"callRoomId": f"flood-{index}-{n}"}, "id": request_id}
            try:
                await connection.send(json.dumps(join))
                self.sent += 1
                async with asyncio.timeout(FLOOD_REPLY_TIMEOUT_SECS):
                    while (reply := json.loads(await connection.recv())).get("id") != request_id:
                        pass
            except TimeoutError:
                self.unanswered += 1
                continue
            except websockets.ConnectionClosed:
                self.close_codes.append(connection.close_code)
                return
            if reply["event"] == "webrtc:room-joined":
                self.rooms += 1
            elif reply["data"]["error"] == "rate-limited":
                self.rate_limited += 1
            else:
                self.other.append(reply["data"]["error"])
            if self.sent >= FLOOD_SOCKETS * 25:
                self.started.set()


@asynccontextmanager
async def flooding(peers: list[Peer]) -> AsyncIterator[Flood]:
    """The peers' connections flood joins for as long as the block runs."""
    for peer in peers:  # the flood reads these connections itself
        peer._reader.cancel()
    await asyncio.gather(*(peer._reader for peer in peers), return_exceptions=True)
    flood, stop = Flood(), asyncio.Event()
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(flood.cycle(peer.connection, i, stop)) for i, peer in enumerate(peers)]
    try:
        yield flood
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        failures = [r for r in await asyncio.gather(*tasks, return_exceptions=True) if isinstance(r, Exception)]
        assert not failures, failures


async def flood_peers(open_peer: OpenPeer, cluster: Cluster, server: int, user: str) -> list[Peer]:
    return [await open_peer(cluster, server, user) for _ in range(FLOOD_SOCKETS)]


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------


def post_json(server: Server, path: str, body: dict[str, Any], source: str = "127.0.0.1") -> http.client.HTTPResponse:
    """POST ``body`` from the loopback address ``source``; the response, body read."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30, source_address=(source, 0))
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.body = response.read()  # type: ignore[attr-defined]
        return response
    finally:
        connection.close()


def login(server: Server, username: str, password: str = PASSWORD, source: str = "127.0.0.1") -> tuple[int, str]:
    """The status of a login and its ``Retry-After`` ("" when none)."""
    response = post_json(server, "/api/auth/token/", {"username": username, "password": password}, source)
    return response.status, response.getheader("Retry-After") or ""


def token_pair(server: Server, username: str) -> dict[str, str]:
    response = post_json(server, "/api/auth/token/", {"username": username, "password": PASSWORD})
    assert response.status == 200, response.status
    return json.loads(response.body)  # type: ignore[attr-defined]


def token_expiry(token: str) -> int:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"]


def unix_time(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------


async def test_a_non_member_cannot_squat_a_group_call(start_cluster: ClusterFactory, open_peer: OpenPeer) -> None:
    """Tests that a user in no group who takes a group's room id first, without
    ``groupId``, and fills that room gets a room of his own: the group's members, joining
    on the other processes with ``metadata.groupId``, all get in, see only each other, and
    exchange offers and candidates that never reach him, nor his them (§5 rule 1)."""
    capacity = 3
    cluster = start_cluster(3, CALLS_MAX_PARTICIPANTS=str(capacity))
    group_id = cluster.group_id()
    room = f"group-{group_id}"
    squatters = [await open_peer(cluster, 0, "dave") for _ in range(capacity)]
    await join_all(squatters, room)
    extra = await open_peer(cluster, 0, "dave")
    refused = await extra.request("webrtc:join-room", {"callRoomId": room})
    assert refused["data"]["error"] == "room-full", refused  # the squatter's room is full

    members = [
        await open_peer(cluster, 1, "alice"),
        await open_peer(cluster, 2, "bob"),
        await open_peer(cluster, 1, "carol"),
    ]
    for count, member in enumerate(members, 1):
        joined = await member.join(room, metadata={"groupId": group_id})
        assert joined["participantCount"] == count, joined
        assert [p["socketId"] for p in joined["existingParticipants"]] == [m.socket_id for m in members[: count - 1]]
        assert str(joined["metadata"]["groupId"]) == str(group_id)
    for index, member in enumerate(members):
        for later in members[index + 1 :]:
            await member.take(about(later.socket_id))

    alice, bob, carol = members
    offer = {"type": "offer", "sdp": "v=0 offer"}
    await alice.send("webrtc:offer", {"callRoomId": room, "targetSocketId": bob.socket_id, "offer": offer})
    assert (await bob.event("webrtc:offer"))["data"]["fromSocketId"] == alice.socket_id
    await carol.send("webrtc:ice-candidate", {"callRoomId": room, "candidate": "to-the-group"})
    for member in (alice, bob):
        assert (await member.event("webrtc:ice-candidate"))["data"]["fromSocketId"] == carol.socket_id

    squatter = squatters[0]
    reply = await squatter.request(
        "webrtc:offer", {"callRoomId": room, "targetSocketId": alice.socket_id, "offer": offer}
    )
    assert reply["data"]["error"] == "participant-not-found", reply
    await squatter.send("webrtc:ice-candidate", {"callRoomId": room, "candidate": "to-the-squatters"})
    for other in squatters[1:]:
        assert (await other.event("webrtc:ice-candidate"))["data"]["fromSocketId"] == squatter.socket_id
    await asyncio.gather(*(peer.expect_silence() for peer in [*squatters, extra, *members]))


async def test_a_user_holds_at_most_the_connection_limit_across_processes(
    start_cluster: ClusterFactory, open_peer: OpenPeer
) -> None:
    """Tests that of one more than ``CALLS_MAX_CONNECTIONS_PER_USER`` connections of one
    user opened at once over three processes, exactly one is closed with 4409, and that
    once one of the others closes, a new one gets in and the next is refused again
    (§2)."""
    cluster = start_cluster(3)
    attempts = await asyncio.gather(
        *(open_peer(cluster, i % 3, "alice", admitted=None) for i in range(MAX_CONNECTIONS_PER_USER + 1))
    )
    admitted = [peer for peer in attempts if peer.socket_id]
    refused = [peer for peer in attempts if not peer.socket_id]
    assert len(admitted) == MAX_CONNECTIONS_PER_USER, f"{len(admitted)} admitted"
    assert [await peer.wait_closed(RECEIVE_TIMEOUT_SECS) for peer in refused] == [TOO_MANY_CONNECTIONS]
    for server in range(3):
        peer = await open_peer(cluster, server, "alice", admitted=False)
        assert peer.close_code == TOO_MANY_CONNECTIONS
    other_user = await open_peer(cluster, 0, "bob")  # the limit is per user
    await other_user.round_trip()

    leaving = admitted[0]
    await leaving.close()
    elsewhere = (leaving.server + 1) % 3
    deadline = time.monotonic() + RECEIVE_TIMEOUT_SECS
    while not (newcomer := await open_peer(cluster, elsewhere, "alice", admitted=None)).socket_id:
        assert newcomer.close_code == TOO_MANY_CONNECTIONS
        assert time.monotonic() < deadline, "no connection got in after one closed"
        await asyncio.sleep(RETRY_INTERVAL_SECS)
    await newcomer.round_trip()
    assert (await open_peer(cluster, leaving.server, "alice", admitted=False)).close_code == TOO_MANY_CONNECTIONS
    for peer in admitted[1:]:
        assert peer.close_code is None


async def test_a_join_flood_does_not_delay_other_users_handshakes(
    start_cluster: ClusterFactory, open_peer: OpenPeer
) -> None:
    """Tests that while one user's sockets cycle through new rooms as fast as they are
    answered, other users' handshakes (connect to ``webrtc:connected``) on the same
    process take under a second at the 99th percentile, and the flooder creates at most
    ``CALLS_JOINS_PER_MINUTE`` rooms, the rest answered ``rate-limited`` (§5 rules 1
    and 9)."""
    cluster = start_cluster(1)
    probers = ("alice", "bob", "carol")
    for user in probers:
        cluster.token(user)
    flooders = await flood_peers(open_peer, cluster, 0, "dave")
    handshakes: list[float] = []
    async with flooding(flooders) as flood:
        async with asyncio.timeout(RECEIVE_TIMEOUT_SECS):
            await flood.started.wait()
        sent_before_probes = flood.sent
        for n in range(HANDSHAKE_PROBES):
            began = time.monotonic()
            try:
                probe = await open_peer(cluster, 0, probers[n % len(probers)])
            except (OSError, websockets.InvalidHandshake, TimeoutError) as exc:  # daphne gave up on it
                raise AssertionError(f"a handshake failed after {time.monotonic() - began:.1f}s: {exc!r}") from exc
            handshakes.append(time.monotonic() - began)
            await probe.close()
        sent_during_probes = flood.sent - sent_before_probes
    handshakes.sort()
    p99 = handshakes[math.ceil(0.99 * len(handshakes)) - 1]
    assert p99 < HANDSHAKE_P99_LIMIT_SECS, f"handshakes during the flood: {[round(t, 3) for t in handshakes]}"
    assert sent_during_probes > FLOOD_SOCKETS * 10, f"the flood sent only {sent_during_probes} joins"
    assert flood.rooms <= JOINS_PER_MINUTE, f"one user created {flood.rooms} rooms"
    assert flood.rate_limited > 0 and not flood.other and not flood.close_codes, flood


async def test_a_history_backlog_and_a_flood_make_no_live_process_look_dead(
    start_cluster: ClusterFactory, open_peer: OpenPeer
) -> None:
    """Tests that while the database holds every history write back and one user floods
    joins on process 0, killing process 2 still gets its participants announced ``lost``
    by the survivors within ``CALLS_PRESENCE_TTL_SECS``, and that no live process is
    declared dead: nothing is closed with 1001, the survivors' participants stay in their
    room and relay, and the history catches up once the database lets it (§5 rules 4
    and 9)."""
    cluster = start_cluster(3)
    alice, bob = await open_peer(cluster, 0, "alice"), await open_peer(cluster, 1, "bob")
    doomed = [await open_peer(cluster, 2, "carol"), await open_peer(cluster, 2, "carol")]
    await join_all([alice, bob, *doomed], "cascade")
    flooders = await flood_peers(open_peer, cluster, 0, "dave")

    with cluster.history_blocked():
        async with flooding(flooders) as flood:
            async with asyncio.timeout(RECEIVE_TIMEOUT_SECS):
                await flood.started.wait()
            assert flood.rooms > 0  # their history writes wait behind the lock
            killed_at = time.monotonic()
            cluster.servers[2].stop(signal.SIGKILL)
            deadline = killed_at + PRESENCE_TTL_SECS  # the rule itself (1.3 to 1.9 s on two cores)
            for survivor in (alice, bob):
                for peer in doomed:
                    frame = await survivor.take(left(peer.socket_id), timeout=max(0.0, deadline - time.monotonic()))
                    assert frame["data"]["reason"] == "lost", frame
            lost_after = time.monotonic() - killed_at

            offer = {"type": "offer", "sdp": "v=0 offer"}
            await alice.send("webrtc:offer", {"callRoomId": "cascade", "targetSocketId": bob.socket_id, "offer": offer})
            assert (await bob.event("webrtc:offer"))["data"]["fromSocketId"] == alice.socket_id
            answer = {"type": "answer", "sdp": "v=0 answer"}
            await bob.send(
                "webrtc:answer", {"callRoomId": "cascade", "targetSocketId": alice.socket_id, "answer": answer}
            )
            assert (await alice.event("webrtc:answer"))["data"]["fromSocketId"] == bob.socket_id
            # A live process that missed its beats is declared dead a lease later: watch one.
            await asyncio.gather(alice.expect_silence(PRESENCE_TTL_SECS / 2 + 0.5), bob.expect_silence())
            newcomer = await open_peer(cluster, 1, "carol")
            joined = await newcomer.join("cascade")
            assert [p["socketId"] for p in joined["existingParticipants"]] == [alice.socket_id, bob.socket_id]
            assert flood.rooms <= JOINS_PER_MINUTE, f"the flooder created {flood.rooms} rooms"
            flood_closes = list(flood.close_codes)

    assert lost_after < PRESENCE_TTL_SECS, lost_after
    assert alice.close_code is None and bob.close_code is None
    assert not flood_closes, f"flooding connections closed with {flood_closes}"
    for server in cluster.servers[:2]:
        assert server.process.poll() is None
        assert "declared dead" not in server.log()
    for peer in doomed:
        await cluster.rows_become([("lost",)], "SELECT leave_reason FROM calls_callparticipant WHERE socket_id = ?",
                                  peer.socket_id)  # fmt: skip


async def test_an_expired_token_closes_its_connection_unless_refreshed(
    start_cluster: ClusterFactory, open_peer: OpenPeer
) -> None:
    """Tests that with access tokens of ``JWT_ACCESS_TTL_SECS`` = 3, of two connections
    made with one token, the one not refreshed is closed with 4401 within two seconds
    after its ``authExpiresAt`` (the token's expiry), while the one that sent
    ``webrtc:refresh-auth`` with a later token from ``/api/auth/token/refresh/`` is still
    served then and closed only at the later token's expiry; another user's token
    refreshes nothing (§2)."""
    cluster = start_cluster(1, JWT_ACCESS_TTL_SECS=str(ACCESS_TTL_SECS))
    server = cluster.servers[0]
    tokens = await asyncio.to_thread(token_pair, server, "alice")
    cluster.tokens["alice"] = tokens["access"]
    first_expiry = token_expiry(tokens["access"])
    stale, refreshed = await open_peer(cluster, 0, "alice"), await open_peer(cluster, 0, "alice")
    for peer in (stale, refreshed):
        assert unix_time(peer.connected.get("authExpiresAt") or "1970-01-01") == first_expiry, peer.connected

    reply = await refreshed.request("webrtc:refresh-auth", {"token": cluster.token("bob")})
    assert reply["data"]["error"] == "forbidden", reply  # another user's token
    while True:  # a later token: one issued in a later second
        response = await asyncio.to_thread(post_json, server, "/api/auth/token/refresh/", tokens)
        fresh = json.loads(response.body)["access"]  # type: ignore[attr-defined]
        if token_expiry(fresh) > first_expiry:
            break
        assert time.time() < first_expiry - 0.2, "no later token before the first one expired"
        await asyncio.sleep(RETRY_INTERVAL_SECS * 4)
    reply = await refreshed.request("webrtc:refresh-auth", {"token": fresh})
    assert (reply["event"], reply["data"]["event"]) == ("webrtc:ack", "webrtc:refresh-auth"), reply

    assert await stale.wait_closed(first_expiry + EXPIRY_GRACE_SECS - time.time()) == UNAUTHENTICATED
    assert stale.closed_at >= first_expiry - 0.05, stale.closed_at - first_expiry  # not before its expiry
    await refreshed.round_trip()  # past the first expiry, after the sweep that closed the other
    fresh_expiry = token_expiry(fresh)
    assert await refreshed.wait_closed(fresh_expiry + EXPIRY_GRACE_SECS - time.time()) == UNAUTHENTICATED
    assert refreshed.closed_at >= fresh_expiry - 0.05, refreshed.closed_at - fresh_expiry


async def test_deactivated_and_removed_users_are_cut_off_on_every_process(
    start_cluster: ClusterFactory, open_peer: OpenPeer
) -> None:
    """Tests that with alice, bob and carol in their group's call on each of three
    processes, deactivating bob and removing carol from the group, straight in the
    shared database, closes every connection of bob with 4401 and takes every connection
    of carol out of the room within five seconds: the others are told ``removed``, carol
    gets ``room-left`` and keeps her connections, but can no longer join (§2)."""
    cluster = start_cluster(3)
    group_id = cluster.group_id()
    room = f"group-{group_id}"
    by_user = {user: [await open_peer(cluster, i, user) for i in range(3)] for user in ("alice", "bob", "carol")}
    await join_all([peer for peers in by_user.values() for peer in peers], room, metadata={"groupId": group_id})

    cluster.execute("UPDATE accounts_user SET is_active = ? WHERE username = ?", False, "bob")
    cluster.execute(
        "DELETE FROM chatgroups_membership"
        " WHERE group_id = ? AND user_id = (SELECT id FROM accounts_user WHERE username = ?)",
        group_id,
        "carol",
    )
    deadline = time.monotonic() + CREDENTIAL_DEADLINE_SECS

    def remaining() -> float:
        return max(0.0, deadline - time.monotonic())

    for peer in by_user["bob"]:
        assert await peer.wait_closed(remaining()) == UNAUTHENTICATED, f"bob on process {peer.server}"
    room_left = {}
    for peer in by_user["carol"]:
        room_left[peer] = await peer.event("webrtc:room-left", remaining())
        assert room_left[peer]["data"]["callRoomId"] == room
    for peer in by_user["alice"]:
        for carol in by_user["carol"]:
            assert (await peer.take(left(carol.socket_id), remaining()))["data"]["reason"] == "removed"
        for bob in by_user["bob"]:
            await peer.take(left(bob.socket_id), remaining())
    for peer in by_user["carol"]:
        await peer.round_trip()
        refused = await peer.request("webrtc:join-room", {"callRoomId": room, "metadata": {"groupId": group_id}})
        assert refused["data"]["error"] == "forbidden", refused
    alices = by_user["alice"]
    await alices[0].send("webrtc:ice-candidate", {"callRoomId": room, "candidate": "still-a-call"})
    for peer in alices[1:]:
        assert (await peer.event("webrtc:ice-candidate"))["data"]["fromSocketId"] == alices[0].socket_id
    await asyncio.gather(*(peer.expect_silence() for peer in alices))
    for peer in by_user["carol"]:  # what she heard before her room-left is of no matter
        heard_after = peer.frames[peer.frames.index(room_left[peer]) + 1 :]
        assert all("id" in frame for frame in heard_after), heard_after  # her own requests' replies only
    for peer in [*alices, *by_user["carol"]]:
        assert peer.close_code is None


def test_login_guesses_are_throttled_across_processes(start_cluster: ClusterFactory) -> None:
    """Tests that of 100 wrong passwords sent to two processes at once from one address,
    first at one username, then at others, only the first
    ``CALLS_LOGIN_FAILURES_PER_USERNAME`` (10) at the username and
    ``CALLS_LOGIN_FAILURES_PER_ADDRESS`` (20) from the address are checked: the rest are
    answered 429 with ``Retry-After`` by either process, and so is the right password
    then, while another address still logs in to another account (§11)."""
    cluster = start_cluster(2)
    servers = cluster.servers
    outcomes: list[tuple[int, str]] = []

    def guesses(usernames: list[str]) -> list[tuple[int, str]]:
        """The usernames' wrong passwords, half to each process, both at once; then one
        more to each process, which must be refused."""
        with ThreadPoolExecutor(max_workers=len(servers)) as pool:
            answers = list(pool.map(lambda pair: login(servers[pair[0] % 2], pair[1], "wrong-guess"),
                                    enumerate(usernames)))  # fmt: skip
        answers += [login(server, usernames[-1], "wrong-guess") for server in servers]
        assert [status for status, _ in answers[-2:]] == [429, 429], answers[-2:]
        outcomes.extend(answers)
        return answers

    at_alice = guesses(["alice"] * 14)
    assert sorted(status for status, _ in at_alice) == [401] * LOGIN_FAILURES_PER_USERNAME + [429] * 6
    at_others = guesses([f"guess-{n}" for n in range(82)])
    checked_from_address = LOGIN_FAILURES_PER_ADDRESS - LOGIN_FAILURES_PER_USERNAME
    assert sorted(status for status, _ in at_others) == [401] * checked_from_address + [429] * 74
    assert len(outcomes) == 100
    for status, retry_after in outcomes:
        if status == 429:
            assert retry_after.isdigit() and 1 <= int(retry_after) <= LOGIN_WINDOW_SECS, retry_after
        else:
            assert status == 401 and not retry_after

    assert login(servers[0], "bob")[0] == 429  # the address is locked: not even checked
    assert login(servers[1], "bob", source="127.0.0.2")[0] == 200  # another address is not
    status, retry_after = login(servers[1], "alice", source="127.0.0.2")
    assert (status, retry_after.isdigit()) == (429, True)  # the username is locked from everywhere
