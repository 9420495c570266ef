"""Tests that an unchanged socket.io-client 4.8 recovers its connection state (docs/protocol.md
§6, Socket.IO's "connection state recovery") on real daphne processes: its transport killed
without a close frame, it comes back within the grace with the same ``socket.id``,
``socket.recovered === true``, and the events sent to it meanwhile, in order, before live
traffic; to the same process, or through Redis to another one.

The client is tests/js/socketio/recover.mjs on node (socket.io-client as tests/js/package-lock.json
pins it: ``npm ci --prefix tests/js``); it cuts and holds its own connection with a TCP proxy.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.redis_server import RedisServer
from tests.servers import PROJECT_DIR, Server, prepare_database, server_env, start_daphnes

JS_DIR = PROJECT_DIR / "tests" / "js"
NODE_TIMEOUT_SECS = 120.0
GRACE_SECS = 20
SETTINGS = {"CALLS_RESUME_GRACE_SECS": str(GRACE_SECS), "CALLS_JOINS_PER_MINUTE": "1000"}


@dataclass
class Processes:
    servers: list[Server]
    tokens: dict[str, str]


def _tokens(server: Server) -> dict[str, str]:
    return {user: server.token(user) for user in ("alice", "bob")}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """One daphne on the in-process channel layer."""
    workdir = tmp_path_factory.mktemp("sio-recovery-1")
    env = server_env(workdir / "db.sqlite3", **SETTINGS)
    prepare_database(env)
    servers = start_daphnes(env, [workdir / "daphne.log"])
    try:
        yield Processes(servers, _tokens(servers[0]))
    finally:
        for server in servers:
            server.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """Two daphnes sharing Redis and a database."""
    workdir = tmp_path_factory.mktemp("sio-recovery-2")
    redis = RedisServer(workdir / "redis").start()
    env = server_env(workdir / "db.sqlite3", REDIS_URL=redis.url, **SETTINGS)
    servers: list[Server] = []
    try:
        prepare_database(env)
        servers = start_daphnes(env, [workdir / f"daphne{i}.log" for i in range(2)])
        yield Processes(servers, _tokens(servers[0]))
    finally:
        for server in servers:
            server.stop(signal.SIGKILL)
        redis.stop()


def run_recover(transports: str, alice_servers: list[Server], bob_server: Server, tokens: dict[str, str]) -> Any:
    node = shutil.which("node")
    assert node is not None, "node is not installed (README: make test needs Node.js 20 or later)"
    assert (JS_DIR / "node_modules" / "socket.io-client").is_dir(), "run `npm ci --prefix tests/js` (make test does)"
    urls = ",".join(server.http for server in alice_servers)
    result = subprocess.run(
        [node, str(JS_DIR / "socketio" / "recover.mjs"), transports, urls, bob_server.http, tokens["alice"],
         tokens["bob"]],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_SECS,
        check=False,
    )  # fmt: skip
    servers = {server.port: server for server in [*alice_servers, bob_server]}.values()
    logs = "\n".join(f"--- {server.log_path.name}\n{server.log()[-3000:]}" for server in servers)
    assert result.returncode == 0, f"recover.mjs failed:\n{result.stderr[-4000:]}\n{logs}"
    return json.loads(result.stdout)


def assert_recovered(seen: dict[str, Any]) -> None:
    before, after = seen["before"], seen["after"]
    assert before["hasPid"], "the CONNECT reply carries a pid"
    assert seen["disconnectReason"] == "transport close"
    assert seen["acks"] == ["webrtc:ack"] * 4
    assert after["recovered"] is True
    assert after["socketId"] == before["socketId"]
    assert after["engineId"] != before["engineId"], "a new Engine.IO session: the transport really was new"

    received = seen["received"]
    events = [item["event"] for item in received]
    assert events == [
        "webrtc:connected",
        "webrtc:resumed",
        "webrtc:offer",
        "webrtc:ice-candidate",
        "webrtc:ice-candidate",
        "webrtc:ice-candidate",
        "webrtc:ice-candidate",  # the live one, after the missed ones
    ], events
    connected, resumed, offer, *candidates = (item["args"][0] for item in received)
    assert connected["socketId"] == before["socketId"]
    assert isinstance(connected["resumeToken"], str) and connected["resumeToken"]
    assert resumed["socketId"] == before["socketId"]
    assert resumed["missed"] == 4
    assert resumed["callRoomId"].startswith("recover-")
    assert offer["offer"] == {"type": "offer", "sdp": "v=0 offer while away"}
    assert offer["fromUserId"] == "2"
    assert [c["candidate"]["candidate"].split()[0] for c in candidates] == [
        "candidate:1",
        "candidate:2",
        "candidate:3",
        "candidate:9",
    ]
    # Every event carries its offset as its last argument, a string.
    for item in received:
        assert len(item["args"]) == 2 and isinstance(item["args"][-1], str), item
    assert seen["answerAck"] == {"event": "webrtc:ack", "data": {"event": "webrtc:answer"}}
    assert seen["bobGotAnswer"]["fromSocketId"] == before["socketId"]
    assert seen["bobLeftOver"] == [], "bob saw alice neither leave nor join"


def assert_no_traceback(*servers: Server) -> None:
    for server in servers:
        assert "Traceback" not in server.log(), server.log()[-4000:]


@pytest.mark.parametrize("transports", ["websocket", "default"])
def test_a_killed_transport_recovers_on_the_same_process(one_process: Processes, transports: str) -> None:
    [server] = one_process.servers
    seen = run_recover(transports, [server], server, one_process.tokens)
    assert_recovered(seen)
    assert "lost=True" in server.log()
    assert_no_traceback(server)


@pytest.mark.parametrize("transports", ["websocket", "default"])
def test_a_killed_transport_recovers_on_another_process(two_processes: Processes, transports: str) -> None:
    first, second = two_processes.servers
    seen = run_recover(transports, [first, second], second, two_processes.tokens)
    assert_recovered(seen)
    assert_no_traceback(first, second)
