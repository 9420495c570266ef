"""A websocket client of the native endpoint over a real socket, for real servers."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.frame_schema import check_frame

RECEIVE_TIMEOUT_SECS = 5.0
CHECK_FRAMES = "PYTEST_VERSION" in os.environ  # set by pytest for its session


class WsClient:
    def __init__(self, connection: websockets.ClientConnection) -> None:
        self.connection = connection
        self.socket_id = ""
        self.user_id = ""
        self.resume_token = ""  # of the last webrtc:connected, if the server sent one

    @classmethod
    async def open(cls, url: str, token: str) -> WsClient:
        connection = await websockets.connect(f"{url}?token={token}", open_timeout=RECEIVE_TIMEOUT_SECS)
        client = cls(connection)
        connected = await client.expect("webrtc:connected")
        client.socket_id = connected["data"]["socketId"]
        client.user_id = connected["data"]["userId"]
        client.resume_token = connected["data"].get("resumeToken") or ""
        return client

    async def send(self, event: str, data: dict[str, Any], id: str | int | None = None) -> None:
        frame: dict[str, Any] = {"event": event, "data": data}
        if id is not None:
            frame["id"] = id
        await self.connection.send(json.dumps(frame))

    async def receive(self, timeout: float = RECEIVE_TIMEOUT_SECS) -> dict[str, Any]:
        """The next frame; under pytest, it must match its event's schema in the AsyncAPI
        document (the benchmarks, which use this client too, are not slowed down by it)."""
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.connection.recv(), timeout))
        if CHECK_FRAMES:
            check_frame(frame)
        return frame

    async def expect(self, event: str, timeout: float = RECEIVE_TIMEOUT_SECS) -> dict[str, Any]:
        frame = await self.receive(timeout)
        assert frame["event"] == event, f"expected {event}, got {frame}"
        return frame

    async def expect_silence(self, secs: float = 0.3) -> None:
        try:
            frame = await asyncio.wait_for(self.connection.recv(), secs)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame}")

    async def join(self, room: str, **extra: Any) -> dict[str, Any]:
        await self.send("webrtc:join-room", {"callRoomId": room, **extra})
        return (await self.expect("webrtc:room-joined"))["data"]

    async def close(self) -> None:
        await self.connection.close()

    # Resume (docs/protocol.md §6) -------------------------------------------------

    @classmethod
    async def open_with(cls, url: str, **params: str) -> tuple[WsClient, dict[str, Any]]:
        """Connect with the query ``params`` (e.g. ``token=…, resume=…``); return the
        client and its ``webrtc:connected`` frame (whose ids it takes)."""
        connection = await websockets.connect(f"{url}?{urlencode(params)}", open_timeout=RECEIVE_TIMEOUT_SECS)
        client = cls(connection)
        try:
            connected = await client.expect("webrtc:connected")
        except BaseException:
            await connection.close()
            raise
        client.socket_id = connected["data"]["socketId"]
        client.user_id = connected["data"]["userId"]
        client.resume_token = connected["data"].get("resumeToken") or ""
        return client, connected

    @classmethod
    async def resume(cls, url: str, token: str, resume_token: str) -> tuple[WsClient, dict[str, Any], dict[str, Any]]:
        """Connect with ``?token=…&resume=…``: the client, its ``webrtc:connected`` and
        the frame after it (``webrtc:resumed``, or the ``resume-failed`` error)."""
        client, connected = await cls.open_with(url, token=token, resume=resume_token)
        try:
            second = await client.receive()
        except BaseException:
            await client.connection.close()
            raise
        return client, connected, second

    async def abort(self) -> None:
        """Drop the TCP connection without a close frame (the server sees 1006), as a
        network drop would, and wait until this side knows it is closed."""
        self.connection.transport.abort()
        await asyncio.wait_for(self.connection.wait_closed(), RECEIVE_TIMEOUT_SECS)

    async def round_trip(self, tag: str = "sentinel") -> None:
        """A sentinel: a request whose reply must be the next frame, proving that nothing
        else reached this connection before it."""
        await self.send("webrtc:leave-room", {"callRoomId": "sentinel-room"}, id=tag)
        frame = await self.receive()
        assert (frame["event"], frame.get("id"), frame["data"].get("error")) == (
            "webrtc:signaling-error",
            tag,
            "not-in-room",
        ), f"expected the sentinel's reply, got {frame}"


@dataclass
class Outage:
    """One closed connection of a ``ResumingClient`` and how it came back."""

    closed_at: float  # time.monotonic()
    close_code: int | None
    from_url: str
    to_url: str = ""
    attempts: int = 0
    resumed_at: float | None = None
    missed: int | None = None
    resumed: dict[str, Any] | None = None  # the webrtc:resumed data
    failure: dict[str, Any] | None = None  # a frame that was not the resume's

    @property
    def gap(self) -> float | None:
        return None if self.resumed_at is None else self.resumed_at - self.closed_at


FrameHandler = Callable[[dict[str, Any]], Awaitable[None] | None]


async def wait_until(changed: asyncio.Event, condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``condition()`` holds, checked again each time ``changed`` is set
    (``ResumingClient`` sets its ``changed`` on every frame and every outage)."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                changed.clear()
                await changed.wait()
    except TimeoutError:
        raise AssertionError(f"not within {timeout:.1f}s: {what}") from None


class ResumingClient:
    """A native client that outlives its server process, as ``signaling.js`` does: when
    its connection closes (with any code but 4401), it waits ``backoff`` and reconnects
    to the next of ``urls`` with ``?resume=`` and its last ``resumeToken``, moving on to
    the next URL (after the backoff again) when a connect fails. Every frame but
    ``webrtc:connected`` and ``webrtc:resumed`` goes to ``on_frame``, in order, and into
    ``frames``; each close is an ``Outage`` in ``outages``. A resume that fails stops
    the client (``failed`` set, the outage's ``failure`` says why): the test is then to
    fail, not to go on as a newcomer. ``changed`` (which clients may share) is set on
    every frame and outage."""

    MAX_ATTEMPTS = 20

    def __init__(
        self,
        urls: list[str],
        token: str,
        *,
        start: int = 0,
        backoff: float = 0.5,
        on_frame: FrameHandler | None = None,
        changed: asyncio.Event | None = None,
    ) -> None:
        self.urls = urls
        self.token = token
        self.index = start
        self.backoff = backoff
        self.on_frame = on_frame
        self.connection: websockets.ClientConnection | None = None
        self.socket_id = ""
        self.user_id = ""
        self.resume_token = ""
        self.frames: list[dict[str, Any]] = []
        self.outages: list[Outage] = []
        self.up = asyncio.Event()
        self.failed = asyncio.Event()
        self.crash: BaseException | None = None  # what stopped the reader, if not a close
        self.changed = changed or asyncio.Event()
        self.stopping = False
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return self.urls[self.index % len(self.urls)]

    async def start(self) -> ResumingClient:
        self.connection = await websockets.connect(
            f"{self.url}?{urlencode({'token': self.token})}", open_timeout=RECEIVE_TIMEOUT_SECS
        )
        connected = await self._next_frame()
        assert connected["event"] == "webrtc:connected", connected
        self.socket_id = connected["data"]["socketId"]
        self.user_id = connected["data"]["userId"]
        self.resume_token = connected["data"]["resumeToken"]
        self.up.set()
        self._task = asyncio.create_task(self._run())
        return self

    async def _next_frame(self) -> dict[str, Any]:
        assert self.connection is not None
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.connection.recv(), RECEIVE_TIMEOUT_SECS))
        if CHECK_FRAMES:
            check_frame(frame)
        return frame

    async def _run(self) -> None:
        try:
            while await self._read() and await self._come_back():
                pass
        except BaseException as exc:
            self.crash = exc
            self.failed.set()
            raise
        finally:
            self.up.clear()
            self.changed.set()

    async def _read(self) -> bool:
        """Handle the current connection's frames until it closes; False if stopping."""
        assert self.connection is not None
        try:
            async for text in self.connection:
                frame = json.loads(text)
                if CHECK_FRAMES:
                    check_frame(frame)
                self.frames.append(frame)
                if self.on_frame is not None:
                    result = self.on_frame(frame)
                    if result is not None:
                        await result
                self.changed.set()
        except ConnectionClosed:
            pass
        self.up.clear()
        return not self.stopping

    async def _come_back(self) -> bool:
        """Record the outage and resume; False if that failed (or the client stops)."""
        assert self.connection is not None
        outage = Outage(time.monotonic(), self.connection.close_code, self.url)
        self.outages.append(outage)
        self.changed.set()
        if outage.close_code == 4401:
            outage.failure = {"error": "closed with 4401"}
        elif await self._reconnect(outage):
            self.up.set()
            self.changed.set()
            return True
        if not self.stopping:
            self.failed.set()
        return False

    async def _reconnect(self, outage: Outage) -> bool:
        """Resume on the next URLs until one takes it; False if the resume failed."""
        while outage.attempts < self.MAX_ATTEMPTS:
            await asyncio.sleep(self.backoff)
            if self.stopping:
                return False
            outage.attempts += 1
            self.index += 1
            try:
                self.connection = await websockets.connect(
                    f"{self.url}?{urlencode({'token': self.token, 'resume': self.resume_token})}",
                    open_timeout=RECEIVE_TIMEOUT_SECS,
                )
                connected = await self._next_frame()
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake):
                continue  # not serving (restarting, or going away): the next one
            outage.to_url = self.url
            try:
                resumed = await self._next_frame()
            except (TimeoutError, ConnectionClosed) as exc:
                outage.failure = {"error": repr(exc), "connected": connected}
                return False
            if (
                connected["event"] != "webrtc:connected"
                or connected["data"]["socketId"] != self.socket_id
                or resumed["event"] != "webrtc:resumed"
            ):
                outage.failure = {"connected": connected, "next": resumed}
                return False
            self.resume_token = connected["data"]["resumeToken"]
            outage.resumed_at = time.monotonic()
            outage.resumed = resumed["data"]
            outage.missed = resumed["data"]["missed"]
            return True
        outage.failure = {"error": f"no server took the connection in {self.MAX_ATTEMPTS} attempts"}
        return False

    async def send(self, event: str, data: dict[str, Any], id: str | int | None = None) -> bool:
        """Send on the current connection once it is up (waiting at most the receive
        timeout); False if it did not come up, or closed under the send."""
        frame: dict[str, Any] = {"event": event, "data": data}
        if id is not None:
            frame["id"] = id
        try:
            await asyncio.wait_for(self.up.wait(), RECEIVE_TIMEOUT_SECS)
        except TimeoutError:
            return False
        assert self.connection is not None
        try:
            await self.connection.send(json.dumps(frame))
        except ConnectionClosed:
            return False
        return True

    async def stop(self) -> None:
        """Close (with a close frame: the participant leaves) and stop reconnecting."""
        self.stopping = True
        if self.connection is not None:
            await self.connection.close()
        if self._task is not None:
            await asyncio.gather(asyncio.wait_for(self._task, 2 * RECEIVE_TIMEOUT_SECS), return_exceptions=True)
