"""A websocket client of the native endpoint over a real socket, for real servers."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import websockets

from tests.frame_schema import check_frame

RECEIVE_TIMEOUT_SECS = 5.0
CHECK_FRAMES = "PYTEST_VERSION" in os.environ  # set by pytest for its session


class WsClient:
    def __init__(self, connection: websockets.ClientConnection) -> None:
        self.connection = connection
        self.socket_id = ""
        self.user_id = ""

    @classmethod
    async def open(cls, url: str, token: str) -> WsClient:
        connection = await websockets.connect(f"{url}?token={token}", open_timeout=RECEIVE_TIMEOUT_SECS)
        client = cls(connection)
        connected = await client.expect("webrtc:connected")
        client.socket_id = connected["data"]["socketId"]
        client.user_id = connected["data"]["userId"]
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
