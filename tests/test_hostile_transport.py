"""Tests that hostile input below the protocol gets clean answers from real server
processes: an unknown websocket path is refused without a traceback, a text frame that
is not UTF-8 is closed with 1007, and a request head trickled byte by byte is cut off."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import pytest
import websockets
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from calls.compat import REQUEST_HEAD_TIMEOUT_SECS
from tests.servers import Server, demo_server

RECEIVE_TIMEOUT_SECS = 5.0


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with demo_server(tmp_path_factory.mktemp(request.param), kind=request.param) as server:
        yield server


@pytest.mark.parametrize("path", ["/engine.io/?EIO=4&transport=websocket", "/ws/other/", "/"])
async def test_an_unknown_websocket_path_is_refused_without_a_traceback(server: Server, path: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}{path}", open_timeout=RECEIVE_TIMEOUT_SECS):
            pass
    assert refused.value.response.status_code in (403, 404)
    assert "Traceback" not in server.log()


async def test_a_text_frame_that_is_not_utf8_is_closed_with_1007(server: Server) -> None:
    token = await asyncio.to_thread(server.token, "alice")
    async with websockets.connect(f"{server.ws}?token={token}", open_timeout=RECEIVE_TIMEOUT_SECS) as ws:
        assert json.loads(await ws.recv(RECEIVE_TIMEOUT_SECS))["event"] == "webrtc:connected"
        async with ws.send_context():  # a text frame whose payload the client does not check
            ws.protocol.send_text(b'{"event": "\xff\xfe"}')
        with pytest.raises(ConnectionClosedError):
            await asyncio.wait_for(ws.recv(), RECEIVE_TIMEOUT_SECS)
    assert ws.close_code == 1007


@pytest.fixture(scope="module")
def daphne(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with demo_server(tmp_path_factory.mktemp("daphne-slow")) as server:
        yield server


def test_a_request_head_trickled_byte_by_byte_is_closed_within_seconds(daphne: Server) -> None:
    """daphne only: uvicorn has no request-head timeout (behind nginx, its
    client_header_timeout closes such a request; see deploy/nginx.conf)."""
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
    with socket.create_connection(("127.0.0.1", daphne.port), timeout=RECEIVE_TIMEOUT_SECS) as sock:
        started = time.monotonic()
        closed_after = None
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - started
                break
            sock.settimeout(0.5)  # the pace of the trickle: one byte per half second
            try:
                if sock.recv(1024) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except OSError:
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None, "the server kept the trickling connection open"
    assert closed_after < REQUEST_HEAD_TIMEOUT_SECS + 2
