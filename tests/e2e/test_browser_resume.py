"""Tests that a call on the call page survives a dropped signaling connection (docs/protocol.md
§6): Chromium pages (Playwright, fake camera and microphone) on two real daphne processes
sharing Redis.

Each page reaches the servers through a TCP proxy of its own, run by the test: the page is
loaded from the proxy's address, so its websocket and its HTTP requests go through it, and the
test can cut them (a TCP reset: no close frame), hold new connections for a while, or send
them to the other process. Media flows between the browsers directly, never through the
proxies. The pages tag their RTCPeerConnections (``window.__pcIds``) and log every
``connectionstatechange`` (``window.__pcLog``), so that a test can tell the same connection
from a new one, and see whether it ever left ``connected``.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, WebSocket, expect

from tests.e2e.conftest import (
    DESKTOP,
    MESH_CONNECTED,
    REMOTE_VIDEOS_PLAYING,
    STEP_TIMEOUT_MS,
    join_demo_group,
    mesh_of,
    sign_in,
)
from tests.redis_server import RedisServer
from tests.servers import Server, prepare_database, server_env, start_daphnes

GRACE_SECS = 20
SHUTDOWN_TIMEOUT_SECS = 5
RECONNECTING = "Connection lost; reconnecting…"
LOG_TIMEOUT_SECS = 10.0

# Tag every RTCPeerConnection the page makes, and log its connection states.
TAG_PEER_CONNECTIONS = """(() => {
  const Native = window.RTCPeerConnection;
  const ids = new WeakMap();
  let next = 0;
  window.__pcIds = ids;
  window.__pcLog = [];
  window.RTCPeerConnection = class extends Native {
    constructor(...args) {
      super(...args);
      const id = (next += 1);
      ids.set(this, id);
      window.__pcLog.push([id, 'new']);
      this.addEventListener('connectionstatechange', () => window.__pcLog.push([id, this.connectionState]));
    }
  };
})();"""
# Log what the page's signaling client says about its connection (after it joined).
WATCH_CLIENT = """() => {
  window.__signal = [];
  const { client } = window.callApp;
  client.on('disconnect', ({ code, willReconnect }) => window.__signal.push(['disconnect', code, willReconnect]));
  client.on('reconnecting', ({ attempt }) => window.__signal.push(['reconnecting', attempt]));
  client.on('connect', ({ socketId, resumed }) => window.__signal.push(['connect', socketId, resumed]));
  window.__tile = document.querySelector('.tile.remote');
  window.__stream = window.__tile.querySelector('video').srcObject;
}"""
SNAPSHOT = """() => {
  const { client, mesh } = window.callApp;
  const peers = [...mesh.peers];
  return {
    socketId: client.socketId,
    connected: client.connected,
    pcs: Object.fromEntries(peers.map(([socketId, peer]) => [socketId, window.__pcIds.get(peer.pc)])),
    states: Object.fromEntries(peers.map(([socketId, peer]) => [socketId, peer.pc.connectionState])),
    pcLog: window.__pcLog.length,
  };
}"""
VIDEO_TIME = "() => document.querySelector('.tile.remote video').currentTime"
SIGNALING_BACK = """() => window.callApp.client.connected
  && document.querySelector('#call').dataset.signaling === 'connected'"""


# ---------------------------------------------------------------------------
# A TCP proxy the test can cut
# ---------------------------------------------------------------------------


class TcpProxy:
    """A TCP proxy on a free loopback port to ``upstreams[route]`` (daphne ports).

    ``cut()`` resets every connection through it, both ways (``SO_LINGER`` 0, then
    ``transport.abort()``: an RST, no websocket close frame); ``hold()`` makes new connections
    wait, accepted but not forwarded, until ``release()``; ``route`` picks the upstream of new
    connections (existing ones stay where they are, as behind a draining load balancer).
    """

    def __init__(self, upstreams: list[int]) -> None:
        self.upstreams = upstreams
        self.route = 0
        self.port = 0
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def cut(self) -> None:
        for link in list(self._links):
            for writer in link:
                _reset(writer)
        self._links.clear()

    async def close(self) -> None:
        self.release()
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._open.wait()
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstreams[self.route])
        except OSError:
            _reset(writer)  # the upstream is down: as a refused connection looks
            return
        link = (writer, upstream_writer)
        self._links.add(link)
        try:
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            self._links.discard(link)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.fileno() != -1:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until the end of ``reader``; then close ``writer`` (a half-open websocket is of no use)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass  # reset (a cut, or the process went)
    finally:
        writer.close()


# ---------------------------------------------------------------------------
# Servers and pages
# ---------------------------------------------------------------------------


@dataclass
class Cluster:
    env: dict[str, str]
    redis: RedisServer


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Redis and a database with the demo users, for the daphnes of each test."""
    workdir = tmp_path_factory.mktemp("resume-e2e")
    redis = RedisServer(workdir / "redis").start()
    try:
        env = server_env(
            workdir / "db.sqlite3",
            REDIS_URL=redis.url,
            CALLS_RESUME_GRACE_SECS=str(GRACE_SECS),
            CALLS_SHUTDOWN_TIMEOUT_SECS=str(SHUTDOWN_TIMEOUT_SECS),
            CALLS_JOINS_PER_MINUTE="1000",
        )
        prepare_database(env)
        yield Cluster(env, redis)
    finally:
        redis.stop()


@pytest.fixture
def daphnes(cluster: Cluster, tmp_path: Path) -> Iterator[list[Server]]:
    """Two daphne processes sharing Redis (emptied first: no presence of an earlier test's)."""
    cluster.redis.flush()
    servers = start_daphnes(cluster.env, [tmp_path / f"daphne{i}.log" for i in range(2)])
    try:
        yield servers
    finally:
        for server in servers:
            server.stop(signal.SIGKILL)


@pytest.fixture
async def proxies() -> AsyncIterator[list[TcpProxy]]:
    made: list[TcpProxy] = []
    yield made
    for proxy in made:
        await proxy.close()


@dataclass
class CallPage:
    """A signed-in page in the call, with every signaling frame it received."""

    name: str
    page: Page
    proxy: TcpProxy
    frames: list[dict[str, Any]] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)  # the URL of each websocket
    errors: list[str] = field(default_factory=list)

    def watch(self) -> None:
        def on_websocket(ws: WebSocket) -> None:
            self.sockets.append(ws.url)

            def on_frame(payload: str | bytes) -> None:
                if isinstance(payload, str):
                    self.frames.append(json.loads(payload))

            ws.on("framereceived", on_frame)

        self.page.on("websocket", on_websocket)
        self.page.on("pageerror", lambda error: self.errors.append(f"{self.name}: {error}"))

    def events_since(self, mark: int) -> list[str]:
        return [frame["event"] for frame in self.frames[mark:]]

    async def snapshot(self) -> dict[str, Any]:
        return await self.page.evaluate(SNAPSHOT)

    async def pc_log_since(self, mark: int) -> list[list[Any]]:
        return await self.page.evaluate("mark => window.__pcLog.slice(mark)", mark)

    async def signal_log(self) -> list[list[Any]]:
        return await self.page.evaluate("() => window.__signal")

    async def same_tile_and_stream(self) -> bool:
        return await self.page.evaluate(
            """() => document.querySelector('.tile.remote') === window.__tile
                && window.__tile.querySelector('video').srcObject === window.__stream"""
        )

    async def video_moves_on(self) -> None:
        """The remote video plays: its time advances."""
        start = await self.page.evaluate(VIDEO_TIME)
        await self.page.wait_for_function(f"() => ({VIDEO_TIME})() > {start} + 0.2", timeout=STEP_TIMEOUT_MS)


async def open_call_page(browser: Browser, name: str, proxy: TcpProxy) -> CallPage:
    context = await browser.new_context(viewport=DESKTOP)
    await context.add_init_script(TAG_PEER_CONNECTIONS)
    page = await context.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    call = CallPage(name, page, proxy)
    call.watch()
    await sign_in(page, proxy.http, name)
    await join_demo_group(page)
    return call


async def call_of_two(
    browser: Browser, proxies: list[TcpProxy], alice_upstreams: list[int], bob_upstreams: list[int]
) -> tuple[CallPage, CallPage]:
    """Alice and bob in the demo group's call, each through a proxy of her or his own (to
    ``alice_upstreams``, ``bob_upstreams``; kept in ``proxies``, and as ``CallPage.proxy``),
    media flowing both ways."""
    alice_proxy, bob_proxy = await TcpProxy(alice_upstreams).start(), await TcpProxy(bob_upstreams).start()
    proxies += [alice_proxy, bob_proxy]
    alice = await open_call_page(browser, "alice", alice_proxy)
    bob = await open_call_page(browser, "bob", bob_proxy)
    for call in (alice, bob):  # each one watched as soon as it is in the call
        await call.page.wait_for_function(MESH_CONNECTED, arg=1)
        await call.page.wait_for_function(REMOTE_VIDEOS_PLAYING, arg=1)
        await call.page.evaluate(WATCH_CLIENT)
    return alice, bob


async def checkpoint(*calls: CallPage) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """What ``calls`` are before a test's drop: each one's snapshot, and how many frames it
    has received so far (by name)."""
    return {call.name: await call.snapshot() for call in calls}, {call.name: len(call.frames) for call in calls}


async def log_line(server: Server, pattern: str) -> re.Match[str]:
    """The first line of the server's log that matches ``pattern``, once it is there."""
    deadline = time.monotonic() + LOG_TIMEOUT_SECS
    while not (match := re.search(pattern, server.log(), re.MULTILINE)):
        assert time.monotonic() < deadline, f"no {pattern!r} in {server.log_path.name}:\n{server.log()[-3000:]}"
        await asyncio.sleep(0.05)
    return match


ROOM_CHANGES = {"webrtc:participant-left", "webrtc:participant-joined"}


async def assert_resumed_in_place(
    resumer: CallPage, other: CallPage, before: dict[str, dict[str, Any]], marks: dict[str, int]
) -> None:
    """What a resume must leave as it was: the socketId, the peer connections (the same
    objects, never out of ``connected``), the tiles and their streams; nobody told of a leave
    or a join; the media still flowing both ways."""
    after = {call.name: await call.snapshot() for call in (resumer, other)}
    for call in (resumer, other):
        name = call.name
        assert after[name]["socketId"] == before[name]["socketId"]
        assert after[name]["pcs"] == before[name]["pcs"], f"{name} has the same RTCPeerConnection objects"
        assert set(after[name]["states"].values()) == {"connected"}
        assert await call.pc_log_since(before[name]["pcLog"]) == [], f"{name}: no connection state change at all"
        assert not ROOM_CHANGES & set(call.events_since(marks[name])), call.events_since(marks[name])
        assert await call.same_tile_and_stream(), f"{name}'s remote tile and its stream were kept"
        await call.video_moves_on()
        assert call.errors == []
    resumed = [frame for frame in resumer.frames[marks[resumer.name] :] if frame["event"] == "webrtc:resumed"]
    assert [frame["data"]["socketId"] for frame in resumed] == [before[resumer.name]["socketId"]]
    assert (await resumer.signal_log())[-1] == ["connect", before[resumer.name]["socketId"], True]
    assert await other.signal_log() == [], "the other page's signaling never blinked"


# ---------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------


async def test_a_websocket_cut_without_a_close_frame_resumes_with_the_same_peer_connections(
    browser: Browser, daphnes: list[Server], proxies: list[TcpProxy]
) -> None:
    first, second = daphnes
    alice, bob = await call_of_two(browser, proxies, [first.port], [second.port])
    alice_proxy = alice.proxy
    before, marks = await checkpoint(alice, bob)

    # Alice's connections are reset, and her reconnection held for a moment.
    alice_proxy.hold()
    alice_proxy.cut()
    await expect(alice.page.locator("#call-status")).to_have_text(RECONNECTING)
    await expect(alice.page.locator("#call")).to_have_attribute("data-signaling", "reconnecting")
    # Meanwhile the call goes on: media is peer to peer.
    await alice.video_moves_on()
    assert set((await alice.snapshot())["states"].values()) == {"connected"}
    await log_line(first, rf"disconnect code=1006 lost=True socketId={re.escape(before['alice']['socketId'])}\b")

    alice_proxy.release()
    await alice.page.wait_for_function(SIGNALING_BACK)
    await expect(alice.page.locator("#call-status")).to_have_text("")
    await assert_resumed_in_place(alice, bob, before, marks)
    signals = await alice.signal_log()
    assert signals[0] == ["disconnect", 1006, True]
    assert signals[1][0] == "reconnecting"


async def test_a_server_shutting_down_sends_its_pages_to_another_process_that_resumes_them(
    browser: Browser, daphnes: list[Server], proxies: list[TcpProxy]
) -> None:
    first, second = daphnes
    alice, bob = await call_of_two(browser, proxies, [first.port, second.port], [second.port])
    before, marks = await checkpoint(alice, bob)

    # A rolling restart: the balancer sends new connections to the second process, then the
    # first gets SIGTERM (it closes its sockets with 1001 and parks its participants).
    alice.proxy.route = 1
    first.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(first.process.wait, SHUTDOWN_TIMEOUT_SECS + 10) == 0

    await alice.page.wait_for_function(SIGNALING_BACK)
    await assert_resumed_in_place(alice, bob, before, marks)
    assert (await alice.signal_log())[:2] == [["disconnect", 1001, True], ["reconnecting", 1]]
    socket_id = re.escape(before["alice"]["socketId"])
    await log_line(first, rf"disconnect code=1001 from the server lost=True socketId={socket_id}\b")
    await log_line(second, rf"resumed room=\S+ socketId={socket_id}\b")


async def test_a_page_reloaded_during_a_call_goes_back_into_it(
    browser: Browser, daphnes: list[Server], proxies: list[TcpProxy]
) -> None:
    """Chromium closes a page's websockets with a close frame (1001, going away) when the page
    is reloaded, navigated away or closed (found here, and with a bare websocket server: the
    frame arrives before the TCP connection ends). By the contract a close frame leaves at
    once, so a reload cannot resume: the reloaded page presents the resume token it kept,
    is refused (``resume-failed``), and joins again as a newcomer by itself; the call is whole
    again, with media both ways."""
    first, second = daphnes
    alice, bob = await call_of_two(browser, proxies, [first.port], [second.port])
    before, marks = await checkpoint(alice, bob)
    sockets = len(alice.sockets)
    socket_id = before["alice"]["socketId"]

    await alice.page.reload()
    closed = await log_line(first, rf"disconnect code=(\d+) lost=(\w+) socketId={re.escape(socket_id)}\b")
    print(f"\nChromium's reload closes the page's websocket: {closed.group(0)}")
    assert closed.groups() == ("1001", "False"), "a close frame 1001: the server lets her place go at once"

    # The reloaded page goes back into the call by itself, and the call is whole again.
    await expect(alice.page.locator("#call")).to_be_visible()
    await mesh_of([alice.page, bob.page])
    await alice.page.evaluate(WATCH_CLIENT)
    await bob.page.evaluate(WATCH_CLIENT)
    for call in (alice, bob):
        await call.video_moves_on()
        assert call.errors == []

    # It presented the token it kept in sessionStorage, which the server refused.
    assert "resume=" in alice.sockets[sockets]
    refusals = [f["data"]["error"] for f in alice.frames[marks["alice"] :] if f["event"] == "webrtc:signaling-error"]
    assert refusals == ["resume-failed"]
    after = await alice.snapshot()
    assert after["socketId"] != socket_id
    # Bob saw her leave and join again, and answered her offer with a new connection.
    assert [e for e in bob.events_since(marks["bob"]) if e in ROOM_CHANGES] == [
        "webrtc:participant-left",
        "webrtc:participant-joined",
    ]
    bob_after = await bob.snapshot()
    assert list(bob_after["pcs"]) == [after["socketId"]]
    assert list(bob_after["pcs"].values()) != list(before["bob"]["pcs"].values())
