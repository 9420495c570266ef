"""Tests that SIGTERM shuts a real server process down gracefully: its participants
leave their rooms as ``disconnected``, its websockets close with 1001, its database rows
are closed, and it exits within ``CALLS_SHUTDOWN_TIMEOUT_SECS``; on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from tests.redis_server import RedisServer
from tests.servers import SERVER_COMMANDS, Server, ServerDatabase, prepare_database, start_daphnes, start_servers
from tests.wsclient import WsClient

SHUTDOWN_TIMEOUT_SECS = 5
EXIT_MARGIN_SECS = 5.0
PRESENCE_TTL_SECS = 3  # the smallest the settings allow


async def closed_with(client: WsClient) -> int | None:
    """Read until the server closes the socket; return its close code."""
    try:
        while True:
            await client.receive(timeout=SHUTDOWN_TIMEOUT_SECS + EXIT_MARGIN_SECS)
    except ConnectionClosed:
        pass
    return client.connection.close_code


def wait_for_exit(server: Server) -> float:
    started = time.monotonic()
    server.process.wait(SHUTDOWN_TIMEOUT_SECS + EXIT_MARGIN_SECS)
    return time.monotonic() - started


def participant_rows(database: ServerDatabase) -> list[tuple]:
    return database.rows("SELECT left_at IS NOT NULL, leave_reason FROM calls_callparticipant")


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_sigterm_closes_every_connection_after_leaving_its_room(
    tmp_path: Path, database: ServerDatabase, kind: str
) -> None:
    """Tests also that the shutdown runs once (uvicorn follows SIGTERM with a lifespan
    shutdown)."""
    env = database.env(CALLS_SHUTDOWN_TIMEOUT_SECS=str(SHUTDOWN_TIMEOUT_SECS))
    prepare_database(env)
    command = SERVER_COMMANDS[kind]
    (server,) = start_servers(lambda index, port: command(port), env, [tmp_path / f"{kind}.log"])
    try:
        alice = await WsClient.open(server.ws, server.token("alice"))
        bob = await WsClient.open(server.ws, server.token("bob"))
        await alice.join("closing")
        await bob.join("closing")
        await alice.expect("webrtc:participant-joined")

        server.process.send_signal(signal.SIGTERM)
        codes = await asyncio.gather(closed_with(alice), closed_with(bob))
        assert codes == [1001, 1001]
        assert wait_for_exit(server) < SHUTDOWN_TIMEOUT_SECS + EXIT_MARGIN_SECS
        assert server.process.returncode is not None
        assert participant_rows(database) == [(1, "disconnected"), (1, "disconnected")]
        assert database.rows("SELECT count(*) FROM calls_callroom WHERE ended_at IS NULL") == [(0,)]
        assert server.log().count("shutting down") == 1, server.log()[-3000:]
    finally:
        server.stop(signal.SIGKILL)


async def test_the_others_are_told_disconnected_not_lost(tmp_path: Path, database: ServerDatabase) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    servers: list[Server] = []
    try:
        env = database.env(REDIS_URL=redis.url, CALLS_SHUTDOWN_TIMEOUT_SECS=str(SHUTDOWN_TIMEOUT_SECS),
                           CALLS_PRESENCE_TTL_SECS=str(PRESENCE_TTL_SECS))  # fmt: skip
        prepare_database(env)
        servers = start_daphnes(env, [tmp_path / "daphne0.log", tmp_path / "daphne1.log"])
        staying = await WsClient.open(servers[0].ws, servers[0].token("alice"))
        leaving = await WsClient.open(servers[1].ws, servers[0].token("bob"))
        await staying.join("closing")
        await leaving.join("closing")
        await staying.expect("webrtc:participant-joined")

        servers[1].process.send_signal(signal.SIGTERM)
        left = await staying.expect("webrtc:participant-left", timeout=SHUTDOWN_TIMEOUT_SECS)
        assert left["data"]["reason"] == "disconnected"
        assert left["data"]["participant"]["socketId"] == leaving.socket_id
        assert await closed_with(leaving) == 1001
        wait_for_exit(servers[1])
        # No second, "lost" departure: a member left behind would be reaped within the TTL.
        await staying.expect_silence(PRESENCE_TTL_SECS + 1.5)
        await staying.close()
    finally:
        for server in servers:
            server.stop(signal.SIGKILL)
        redis.stop()
