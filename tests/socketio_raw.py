"""Engine.IO / Socket.IO clients written packet by packet, for tests that send what no
real client would (tests/test_socketio.py); the real client is socket.io-client itself
(tests/js/socketio/)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import websockets
from websockets.exceptions import ConnectionClosed

RECEIVE_TIMEOUT_SECS = 10.0  # generous for a loaded CI machine; waits end on the packet
SILENCE_SECS = 0.3


def event_packet(event: str, data: Any, ack_id: int | None = None) -> str:
    return f"42{'' if ack_id is None else ack_id}{json.dumps([event, data])}"


def decode_event(packet: str) -> tuple[str, Any]:
    """A server event ``42["event",data,"offset"]`` as (event, data)."""
    event, data, _ = decode_event_with_offset(packet)
    return event, data


def decode_event_with_offset(packet: str) -> tuple[str, Any, str]:
    """A server event as (event, data, offset): every event the server emits carries its
    offset as its last argument (docs/protocol.md §6)."""
    assert packet.startswith("42["), packet
    event, data, offset = json.loads(packet[2:])
    assert isinstance(offset, str) and offset.isdigit(), packet
    return event, data, offset


class SocketIOSession:
    """What both raw clients do on top of their Engine.IO transport: ``send`` a packet,
    ``receive`` the next one."""

    socket_id = ""
    pid = ""

    async def send_packet(self, packet: str) -> None:
        raise NotImplementedError

    async def next_packet(self) -> str:
        raise NotImplementedError

    async def connect(self, auth: dict[str, Any] | None = None) -> dict[str, Any]:
        """Socket.IO CONNECT to "/"; returns ``webrtc:connected``'s data."""
        await self.send_packet("40" + (json.dumps(auth) if auth is not None else ""))
        reply = await self.next_packet()
        assert reply.startswith("40{"), reply
        connected = json.loads(reply[2:])
        self.socket_id, self.pid = connected["sid"], connected["pid"]
        event, data = decode_event(await self.next_packet())
        assert event == "webrtc:connected" and data["socketId"] == self.socket_id, (event, data)
        return data

    async def event(self, expected: str) -> Any:
        """The next packet, which must be the server event ``expected``; its data."""
        event, data = decode_event(await self.next_packet())
        assert event == expected, (event, data)
        return data

    async def error(self, code: str) -> dict[str, Any]:
        data = await self.event("webrtc:signaling-error")
        assert data["error"] == code, data
        return data


class RawWebsocket(SocketIOSession):
    """An Engine.IO websocket. It answers the server's pings unless ``silent``."""

    def __init__(self, connection: websockets.ClientConnection, silent: bool) -> None:
        self.connection = connection
        self.silent = silent
        self.handshake: dict[str, Any] = {}
        self.socket_id = ""

    @classmethod
    async def open(
        cls, port: int, *, query: str = "", headers: dict[str, str] | None = None, silent: bool = False
    ) -> RawWebsocket:
        url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket{query}"
        connection = await websockets.connect(url, additional_headers=headers, open_timeout=RECEIVE_TIMEOUT_SECS)
        socket = cls(connection, silent)
        opened = await socket.receive()
        assert opened.startswith("0"), opened
        socket.handshake = json.loads(opened[1:])
        return socket

    async def send(self, packet: str | bytes) -> None:
        await self.connection.send(packet)

    async def receive(self, timeout: float = RECEIVE_TIMEOUT_SECS) -> str:
        """The next packet other than a ping (which is answered, unless silent)."""
        async with asyncio.timeout(timeout):
            while True:
                packet = await self.connection.recv()
                if packet == "2" and not self.silent:
                    await self.connection.send("3")
                    continue
                return packet

    async def expect_silence(self, secs: float = SILENCE_SECS) -> None:
        try:
            packet = await self.receive(secs)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected packet {packet!r}")

    async def closed(self, timeout: float = RECEIVE_TIMEOUT_SECS) -> None:
        """Wait until the server closes the socket (any packets before are skipped)."""
        async with asyncio.timeout(timeout):
            try:
                while True:
                    await self.connection.recv()
            except ConnectionClosed:
                return

    async def send_packet(self, packet: str) -> None:
        await self.send(packet)

    async def next_packet(self) -> str:
        return await self.receive()

    async def close(self) -> None:
        await self.connection.close()


class HttpAnswer:
    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status = status  # headers: by lowercase name
        self.body = body
        self.headers = headers

    @property
    def packets(self) -> list[str]:
        return self.body.decode().split("\x1e")


def http(
    port: int, query: str, *, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> HttpAnswer:
    """One request to the long-polling endpoint (blocking: run it in a thread)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/socket.io/?{query}", data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=RECEIVE_TIMEOUT_SECS + 30) as response:
            return HttpAnswer(response.status, response.read(), {k.lower(): v for k, v in response.headers.items()})
    except urllib.error.HTTPError as error:
        return HttpAnswer(error.code, error.read(), {k.lower(): v for k, v in error.headers.items()})


class RawPolling(SocketIOSession):
    """An Engine.IO long-polling session. ``get`` answers pings, unless ``silent``."""

    def __init__(self, port: int, silent: bool = False, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.silent = silent
        self.headers = headers or {}
        self.sid = ""
        self.socket_id = ""
        self.handshake: dict[str, Any] = {}
        self.received: list[str] = []

    async def open(self) -> RawPolling:
        answer = await self.request("GET", with_sid=False)
        assert answer.status == 200 and answer.body.startswith(b"0"), (answer.status, answer.body)
        self.handshake = json.loads(answer.body[1:])
        self.sid = self.handshake["sid"]
        return self

    async def request(self, method: str, body: bytes | None = None, *, with_sid: bool = True) -> HttpAnswer:
        query = "EIO=4&transport=polling" + (f"&sid={self.sid}" if with_sid else "")
        headers = {"Content-Type": "text/plain;charset=UTF-8", **self.headers} if body is not None else self.headers
        return await asyncio.to_thread(http, self.port, query, method=method, body=body, headers=headers)

    async def post(self, *packets: str) -> None:
        answer = await self.request("POST", "\x1e".join(packets).encode())
        assert (answer.status, answer.body) == (200, b"ok"), (answer.status, answer.body)

    async def receive(self) -> str:
        """The next packet other than a ping or a noop, polling for it as needed."""
        while not self.received:
            answer = await self.request("GET")
            assert answer.status == 200, (answer.status, answer.body)
            for packet in answer.packets:
                if packet == "2" and not self.silent:
                    await self.post("3")
                elif packet not in ("2", "6"):
                    self.received.append(packet)
        return self.received.pop(0)

    async def send_packet(self, packet: str) -> None:
        await self.post(packet)

    async def next_packet(self) -> str:
        return await self.receive()
