"""Fixtures shared by every test: users, groups, tokens and connected websocket clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.db import connection
from rest_framework_simplejwt.tokens import AccessToken

from accounts.models import User
from calls import process
from calls.auth.throttle import reset_throttle
from groups.models import Group, Membership
from tests.frame_schema import check_frame
from tests.postgres_server import PostgresServer
from tests.redis_server import RedisServer
from tests.servers import ServerDatabase
from tests.wsclient import WsClient

PASSWORD = "correct horse battery staple"
RECEIVE_TIMEOUT_SECS = 2.0  # generous for a loaded CI machine; waits end on the event
SILENCE_SECS = 0.2  # how long "nothing arrives" is watched for


@pytest.fixture(autouse=True)
def fresh_signaling_state() -> None:
    """Each test starts with a fresh process state (no connections, empty rooms) and a
    fresh channel layer."""
    import config.asgi

    process.reset()
    reset_throttle()
    channel_layers.backends.clear()
    config.asgi.application.started = True  # start-up cleanup has its own test
    config.asgi.application.handle_signals = False  # pytest keeps its own SIGTERM


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """pytest-django's, and then, before it drops the test database on PostgreSQL (see
    tests/settings.py), the end of every other connection to it, or DROP DATABASE would
    fail: threads of the code under test keep theirs while channels' communicator turns
    close_old_connections into a no-op, and Django's async queries never close theirs."""
    yield
    if connection.vendor == "postgresql":
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


@pytest.fixture(autouse=True)
async def history_drained() -> AsyncIterator[None]:
    """Every test ends with its call-history writes done, before its database goes."""
    yield
    await history_written()


def make_user(username: str, *, display_name: str = "", active: bool = True) -> User:
    user = User.objects.create_user(username=username, password=PASSWORD, display_name=display_name)
    if not active:
        user.is_active = False
        user.save(update_fields=["is_active"])
    return user


@pytest.fixture
def alice(db: None) -> User:
    return make_user("alice", display_name="Alice A.")


@pytest.fixture
def bob(db: None) -> User:
    return make_user("bob", display_name="Bob B.")


@pytest.fixture
def carol(db: None) -> User:
    return make_user("carol")


@pytest.fixture
def dave(db: None) -> User:
    """A user in no group."""
    return make_user("dave", display_name="Dave D.")


@pytest.fixture
def team(alice: User, bob: User, carol: User) -> Group:
    """A chat group of alice (owner), bob and carol."""
    group = Group.objects.create(name="Team")
    Membership.objects.create(group=group, user=alice, role=Membership.Role.OWNER)
    Membership.objects.create(group=group, user=bob)
    Membership.objects.create(group=group, user=carol)
    return group


async def history_written() -> None:
    """Wait until the call-history writes queued so far are in the database."""
    from calls.history import writer

    await writer().drained()


def access_token(user: User) -> str:
    return str(AccessToken.for_user(user))


class Client:
    """A websocket client of the native endpoint, over the real ASGI application."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.socket_id = ""
        self.user_id = ""
        self.resume_token = ""

    async def send(self, event: str, data: Any, id: str | int | None = None) -> None:
        frame: dict[str, Any] = {"event": event, "data": data}
        if id is not None:
            frame["id"] = id
        await self.communicator.send_json_to(frame)

    async def send_raw(self, text: str) -> None:
        # send_input, not send_to: send_to refuses an empty frame, which a client can send.
        await self.communicator.send_input({"type": "websocket.receive", "text": text})

    async def receive(self, timeout: float = RECEIVE_TIMEOUT_SECS) -> dict[str, Any]:
        """The next frame, which must match its event's schema in the AsyncAPI document."""
        frame: dict[str, Any] = json.loads(await self.communicator.receive_from(timeout=timeout))
        check_frame(frame)
        return frame

    async def expect(self, event: str, timeout: float = RECEIVE_TIMEOUT_SECS) -> dict[str, Any]:
        """The next frame, which must be ``event``; returns the whole frame."""
        frame = await self.receive(timeout)
        assert frame["event"] == event, f"expected {event}, got {frame}"
        return frame

    async def expect_error(self, code: str, *, event: str | None = None) -> dict[str, Any]:
        frame = await self.expect("webrtc:signaling-error")
        assert frame["data"]["error"] == code, frame
        assert frame["data"]["message"]
        assert frame["data"]["timestamp"]
        if event is not None:
            assert frame["data"]["event"] == event
        return frame

    async def expect_silence(self, secs: float = SILENCE_SECS) -> None:
        assert await self.communicator.receive_nothing(timeout=secs), "an unexpected frame arrived"

    async def expect_close(self, code: int, timeout: float = RECEIVE_TIMEOUT_SECS) -> None:
        """The server closes the connection with ``code``, whatever frames came first."""
        async with asyncio.timeout(timeout):
            while (output := await self.communicator.receive_output(timeout))["type"] != "websocket.close":
                pass
        assert output.get("code") == code, output

    async def round_trip(self) -> None:
        """A sentinel: a request whose reply must be the next frame, proving that
        nothing else arrived before it."""
        await self.send("webrtc:leave-room", {"callRoomId": "sentinel-room"}, id="sentinel")
        frame = await self.expect("webrtc:signaling-error")
        assert frame["id"] == "sentinel" and frame["data"]["error"] == "not-in-room", frame

    async def join(self, room: str, **extra: Any) -> dict[str, Any]:
        """Join and return the ``room-joined`` data."""
        await self.send("webrtc:join-room", {"callRoomId": room, **extra})
        return (await self.expect("webrtc:room-joined"))["data"]

    async def leave(self, room: str) -> dict[str, Any]:
        await self.send("webrtc:leave-room", {"callRoomId": room})
        return (await self.expect("webrtc:room-left"))["data"]

    async def close(self) -> None:
        await self.communicator.disconnect()

    async def drop(self) -> None:
        """The connection is lost without a close frame (what a server reports as 1006)."""
        await self.communicator.disconnect(code=1006)


ConnectFactory = Callable[..., Any]


@pytest.fixture
async def connect() -> AsyncIterator[ConnectFactory]:
    """``await connect(user)`` → a ``Client`` that received ``webrtc:connected``.

    Every client is disconnected at the end of the test, even when it fails.
    """
    from config.asgi import application

    opened: list[WebsocketCommunicator] = []

    async def _connect(
        user: User | None = None,
        *,
        path: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        expect_connected: bool = True,
    ) -> Client:
        if path is None:
            token = access_token(user) if user is not None else ""
            path = f"/ws/calls/?token={token}" if token else "/ws/calls/"
        communicator = WebsocketCommunicator(application, path, headers=headers or [])
        opened.append(communicator)
        connected, _ = await communicator.connect(timeout=RECEIVE_TIMEOUT_SECS)
        client = Client(communicator)
        if expect_connected:
            assert connected
            frame = await client.expect("webrtc:connected")
            client.socket_id = frame["data"]["socketId"]
            client.user_id = frame["data"]["userId"]
            client.resume_token = frame["data"]["resumeToken"]
        return client

    yield _connect
    for communicator in opened:
        try:
            await asyncio.wait_for(communicator.disconnect(), RECEIVE_TIMEOUT_SECS)
        except Exception:  # noqa: S110 - already closed by the test or the server
            pass
    await history_written()  # the leaves' rows, before the test database goes away


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session; tests that use it get it flushed."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.flush()
    return redis_server.url


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One real PostgreSQL for the session, started by the first test that needs it."""
    server = PostgresServer(log_path=tmp_path_factory.mktemp("postgres") / "postgres.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerDatabase]:
    """The database of a test's server processes, so that each such test runs on both:
    a SQLite file in its tmp_path, or a fresh database of the session's PostgreSQL."""
    if request.param == "sqlite":
        yield ServerDatabase("sqlite", tmp_path / "db.sqlite3")
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create_database()
    try:
        yield ServerDatabase("postgresql", tmp_path / "db.sqlite3", server.url(name))
    finally:
        server.drop_database(name)


@pytest.fixture
async def ws_clients() -> AsyncIterator[list[WsClient]]:
    """Clients of real server processes that a test opens; all closed after it, even
    when the server closed them already."""
    opened: list[WsClient] = []
    yield opened
    for client in opened:
        try:
            await client.close()
        except Exception:  # noqa: S110 - the server may have closed it, or be gone
            pass
