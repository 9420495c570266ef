"""Tests that SIGTERM shuts a real server process down gracefully (docs/protocol.md §5
rule 4, §6): its websockets close with 1001, its participants are parked rather than
announced as gone (nobody is told anything at the shutdown), it exits within
``CALLS_SHUTDOWN_TIMEOUT_SECS``, and a participant that never comes back is closed out:
with Redis, a surviving process tells the room ``disconnected`` once the resume grace is
over and closes its history row; on SQLite and on PostgreSQL.

A single process without Redis keeps its parked participants in its own memory, so once
it has exited nobody is left to tell anyone: what is checked there is the 1001, the exit,
that nothing was announced before the close, and that the next start on the same
database closes the rows left open (and refuses the old resume tokens, which nobody
holds any more)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.redis_server import RedisServer
from tests.servers import SERVER_COMMANDS, Server, ServerDatabase, prepare_database, start_daphnes, start_servers
from tests.wsclient import WsClient

SHUTDOWN_TIMEOUT_SECS = 5
EXIT_MARGIN_SECS = 5.0
PRESENCE_TTL_SECS = 6  # survives a loaded two-core machine
GRACE_SECS = PRESENCE_TTL_SECS + 2  # the dead process's lease runs out within the grace
MARGIN_SECS = 3.0  # scheduling slack: "within the grace and about a second"
EARLY_SECS = 0.5
HISTORY_TIMEOUT_SECS = 10.0
POLL_SECS = 0.05
PARTICIPATION_TABLE = "calls_callparticipant"  # calls.models.CallParticipant


async def closed_with(client: WsClient) -> tuple[int | None, list[dict[str, Any]]]:
    """Read until the server closes the socket; its close code, and the frames that came
    before the close."""
    frames = []
    try:
        while True:
            frames.append(await client.receive(timeout=SHUTDOWN_TIMEOUT_SECS + EXIT_MARGIN_SECS))
    except ConnectionClosed:
        pass
    return client.connection.close_code, frames


def wait_for_exit(server: Server) -> float:
    started = time.monotonic()
    server.process.wait(SHUTDOWN_TIMEOUT_SECS + EXIT_MARGIN_SECS)
    return time.monotonic() - started


def participant_rows(database: ServerDatabase) -> list[tuple]:
    return database.rows(f"SELECT left_at IS NOT NULL, leave_reason FROM {PARTICIPATION_TABLE} ORDER BY id")  # noqa: S608


async def rows_become(database: ServerDatabase, expected: list[tuple], sql: str, *params: object) -> None:
    deadline = time.monotonic() + HISTORY_TIMEOUT_SECS
    while (rows := await asyncio.to_thread(database.rows, sql, *params)) != expected:
        assert time.monotonic() < deadline, f"{sql} gave {rows}, not {expected}"
        await asyncio.sleep(POLL_SECS)


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_sigterm_closes_every_connection_without_announcing_a_departure(
    tmp_path: Path, database: ServerDatabase, kind: str
) -> None:
    """Tests also that the shutdown runs once (uvicorn follows SIGTERM with a lifespan
    shutdown)."""
    env = database.env(CALLS_SHUTDOWN_TIMEOUT_SECS=str(SHUTDOWN_TIMEOUT_SECS), CALLS_RESUME_GRACE_SECS="4")
    prepare_database(env)
    command = SERVER_COMMANDS[kind]
    (server,) = start_servers(lambda index, port: command(port), env, [tmp_path / f"{kind}.log"])
    try:
        alice = await WsClient.open(server.ws, server.token("alice"))
        bob = await WsClient.open(server.ws, server.token("bob"))
        await alice.join("closing")
        await bob.join("closing")
        await alice.expect("webrtc:participant-joined")
        assert alice.resume_token

        server.process.send_signal(signal.SIGTERM)
        (alice_code, alice_frames), (bob_code, bob_frames) = await asyncio.gather(closed_with(alice), closed_with(bob))
        assert (alice_code, bob_code) == (1001, 1001)
        assert alice_frames == bob_frames == [], "parked participants are not announced"
        assert wait_for_exit(server) < SHUTDOWN_TIMEOUT_SECS + EXIT_MARGIN_SECS
        assert server.process.returncode is not None
        assert server.log().count("shutting down") == 1, server.log()[-3000:]
    finally:
        server.stop(signal.SIGKILL)

    # Nobody was left to tell: the next start on this database closes what is open.
    (server,) = start_servers(lambda index, port: command(port), env, [tmp_path / f"{kind}-again.log"])
    try:
        rows = participant_rows(database)
        assert [left for left, _ in rows] == [1, 1], rows
        assert {reason for _, reason in rows} <= {"disconnected", "lost"}, rows
        assert database.rows("SELECT count(*) FROM calls_callroom WHERE ended_at IS NULL") == [(0,)]
        again, connected, refused = await WsClient.resume(server.ws, server.token("alice"), alice.resume_token)
        try:
            assert connected["data"]["socketId"] != alice.socket_id, connected
            assert (refused["event"], refused["data"]["error"]) == ("webrtc:signaling-error", "resume-failed"), refused
            joined = await again.join("closing")  # a newcomer, alone
            assert joined["participantCount"] == 1, joined
        finally:
            await again.close()
    finally:
        server.stop()


async def test_the_others_are_told_nothing_until_a_participant_does_not_come_back(
    tmp_path: Path, database: ServerDatabase
) -> None:
    """Two processes sharing Redis; SIGTERM one: its participant is closed with 1001 and
    parked, the other side hears nothing; it never comes back, so once the grace is over
    the surviving process tells the room ``disconnected``, once (not ``lost`` when the
    dead process's lease runs out, which happens within the grace), and closes its row."""
    redis = RedisServer(tmp_path / "redis").start()
    servers: list[Server] = []
    try:
        env = database.env(REDIS_URL=redis.url, CALLS_SHUTDOWN_TIMEOUT_SECS=str(SHUTDOWN_TIMEOUT_SECS),
                           CALLS_PRESENCE_TTL_SECS=str(PRESENCE_TTL_SECS),
                           CALLS_RESUME_GRACE_SECS=str(GRACE_SECS))  # fmt: skip
        prepare_database(env)
        servers = start_daphnes(env, [tmp_path / "daphne0.log", tmp_path / "daphne1.log"])
        staying = await WsClient.open(servers[0].ws, servers[0].token("alice"))
        watching = await WsClient.open(servers[0].ws, servers[0].token("carol"))
        leaving = await WsClient.open(servers[1].ws, servers[0].token("bob"))
        await staying.join("closing")
        await watching.join("closing")
        await staying.expect("webrtc:participant-joined")
        await leaving.join("closing")
        for client in (staying, watching):
            await client.expect("webrtc:participant-joined")

        servers[1].process.send_signal(signal.SIGTERM)
        terminated_at = time.monotonic()
        code, frames = await closed_with(leaving)
        assert (code, frames) == (1001, []), frames
        assert await asyncio.to_thread(wait_for_exit, servers[1]) < SHUTDOWN_TIMEOUT_SECS + EXIT_MARGIN_SECS
        assert servers[1].log().count("shutting down") == 1, servers[1].log()[-3000:]
        await staying.round_trip("after-exit")  # told nothing at the shutdown
        await watching.round_trip("after-exit")

        for client in (staying, watching):
            left = await client.expect("webrtc:participant-left", timeout=GRACE_SECS + MARGIN_SECS)
            told_after = time.monotonic() - terminated_at
            assert left["data"]["reason"] == "disconnected", left
            assert left["data"]["participant"]["socketId"] == leaving.socket_id, left
            assert GRACE_SECS - EARLY_SECS <= told_after <= GRACE_SECS + MARGIN_SECS, f"told after {told_after:.2f}s"
        await rows_become(database, [(1, "disconnected")],
                          f"SELECT left_at IS NOT NULL, leave_reason FROM {PARTICIPATION_TABLE} WHERE socket_id = ?",  # noqa: S608
                          leaving.socket_id)  # fmt: skip
        assert database.rows("SELECT count(*) FROM calls_callroom WHERE ended_at IS NULL") == [(1,)]

        # No second departure: the grace and the dead process's lease are over by now.
        await asyncio.sleep(max(0.0, terminated_at + GRACE_SECS + MARGIN_SECS - time.monotonic()))
        await staying.round_trip("after-grace")
        await watching.round_trip("after-grace")
        await staying.send("webrtc:ice-candidate", {"callRoomId": "closing", "targetSocketId": watching.socket_id,
                                                    "candidate": "sentinel"}, id="ring")  # fmt: skip
        assert (await staying.receive())["event"] == "webrtc:ack"
        assert (await watching.receive())["data"]["candidate"] == "sentinel"
        await staying.close()
        await watching.close()
    finally:
        for server in servers:
            server.stop(signal.SIGKILL)
        redis.stop()
