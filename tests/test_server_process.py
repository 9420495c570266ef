"""Tests that a real daphne process serves the API and the websocket endpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.servers import Server, demo_server

RECEIVE_TIMEOUT_SECS = 5.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with demo_server(tmp_path_factory.mktemp("server")) as server:
        yield server


async def test_a_demo_user_connects_with_a_token(server: Server) -> None:
    token = server.token("alice")
    async with websockets.connect(f"{server.ws}?token={token}", open_timeout=RECEIVE_TIMEOUT_SECS) as ws:
        frame = json.loads(await ws.recv(RECEIVE_TIMEOUT_SECS))
    assert frame["event"] == "webrtc:connected"
    assert frame["data"]["userId"]


async def test_a_foreign_origin_gets_http_403(server: Server) -> None:
    token = server.token("alice")
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(
            f"{server.ws}?token={token}", origin="https://evil.example", open_timeout=RECEIVE_TIMEOUT_SECS
        ):
            pass
    assert refused.value.response.status_code == 403


async def test_a_missing_token_is_closed_with_4401(server: Server) -> None:
    async with websockets.connect(server.ws, open_timeout=RECEIVE_TIMEOUT_SECS) as ws:
        await ws.wait_closed()
    assert ws.close_code == 4401


async def test_the_access_log_never_shows_a_token(server: Server) -> None:
    token = server.token("bob")
    async with websockets.connect(f"{server.ws}?token={token}", open_timeout=RECEIVE_TIMEOUT_SECS) as ws:
        await ws.recv(RECEIVE_TIMEOUT_SECS)
    async with websockets.connect(f"{server.ws}?token=forged.{token[:40]}", open_timeout=RECEIVE_TIMEOUT_SECS) as ws:
        await ws.wait_closed()
    log = server.log()
    assert "WSCONNECT /ws/calls/" in log
    assert token not in log
    assert token[:40] not in log


async def test_an_oversized_frame_gets_our_error_not_a_dropped_socket(server: Server) -> None:
    """daphne's own frame limit (1 MiB) is above CALLS_MAX_MESSAGE_BYTES (64 KiB)."""
    token = server.token("alice")
    async with websockets.connect(f"{server.ws}?token={token}", open_timeout=RECEIVE_TIMEOUT_SECS) as ws:
        await ws.recv(RECEIVE_TIMEOUT_SECS)
        padding = "x" * (200 * 1024)
        await ws.send(json.dumps({"event": "webrtc:join-room", "data": {"callRoomId": "big", "pad": padding}}))
        error = json.loads(await ws.recv(RECEIVE_TIMEOUT_SECS))
        assert error["data"]["error"] == "message-too-large"
        await ws.send(json.dumps({"event": "webrtc:join-room", "data": {"callRoomId": "big"}}))
        assert json.loads(await ws.recv(RECEIVE_TIMEOUT_SECS))["event"] == "webrtc:room-joined"
