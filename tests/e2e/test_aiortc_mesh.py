"""Tests that real WebRTC peers (aiortc) negotiate a full mesh of data channels through a
real daphne process, over the signaling protocol alone, and exchange a message on each."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import LOOPBACK
from tests.servers import Server
from tests.wsclient import WsClient

PEERS = ("alice", "bob", "carol")
ROOM = "aiortc-mesh"
MESH_TIMEOUT_SECS = 30.0  # generous for a loaded CI machine; the wait ends on the last message

pytestmark = pytest.mark.usefixtures("loopback_candidates")  # tests/e2e/conftest.py


class AiortcPeer:
    """One participant's peer connections, one per other participant, negotiated over the
    signaling protocol in ``room`` (this test's peers, and ``test_aiortc_resume.py``'s).

    As in ``signaling.js``, the newcomer offers to every existing participant (and opens the
    data channel); existing participants answer. aiortc gathers its candidates before
    ``setLocalDescription`` returns, so they travel inside the SDP and nothing is trickled.
    A subclass sends the frames (``send_frame``) and uses the data channels (``attach``).
    """

    def __init__(self, name: str, room: str) -> None:
        self.name = name
        self.room = room
        self.connections: dict[str, RTCPeerConnection] = {}
        self.usernames: dict[str, str] = {}  # socketId → username

    async def send_frame(self, event: str, data: dict[str, Any]) -> None:
        raise NotImplementedError

    def attach(self, channel: RTCDataChannel, socket_id: str) -> None:
        raise NotImplementedError

    async def offer_to_existing(self, joined: dict[str, Any]) -> None:
        """Offer to every participant already in the room (the data of ``webrtc:room-joined``)."""
        for participant in joined["existingParticipants"]:
            self.usernames[participant["socketId"]] = participant["username"]
            await self.offer(participant["socketId"])

    def connection(self, socket_id: str) -> RTCPeerConnection:
        # No STUN or TURN: host candidates only.
        connection = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.connections[socket_id] = connection
        return connection

    async def offer(self, socket_id: str) -> None:
        connection = self.connection(socket_id)
        self.attach(connection.createDataChannel("chat"), socket_id)
        await connection.setLocalDescription(await connection.createOffer())
        await self.send_description("webrtc:offer", "offer", socket_id, connection)

    async def answer(self, socket_id: str, offer: dict[str, str]) -> None:
        connection = self.connection(socket_id)
        connection.on("datachannel", lambda channel: self.attach(channel, socket_id))
        await connection.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type=offer["type"]))
        await connection.setLocalDescription(await connection.createAnswer())
        await self.send_description("webrtc:answer", "answer", socket_id, connection)

    async def answered(self, data: dict[str, Any]) -> None:
        """Take the answer of a ``webrtc:answer`` frame (its data)."""
        await self.connections[data["fromSocketId"]].setRemoteDescription(
            RTCSessionDescription(sdp=data["answer"]["sdp"], type=data["answer"]["type"])
        )

    async def send_description(self, event: str, key: str, socket_id: str, connection: RTCPeerConnection) -> None:
        description = {"type": connection.localDescription.type, "sdp": connection.localDescription.sdp}
        await self.send_frame(event, {"callRoomId": self.room, "targetSocketId": socket_id, key: description})

    async def close_connections(self) -> None:
        for connection in self.connections.values():
            await connection.close()


class MeshPeer(AiortcPeer):
    """One participant: a websocket to the server and its peer connections; it greets the
    other end of each data channel, and notes each greeting it gets."""

    def __init__(self, name: str, client: WsClient, expected: int) -> None:
        super().__init__(name, ROOM)
        self.client = client
        self.expected = expected
        self.received: dict[str, str] = {}  # sender's username → its message
        self.errors: list[dict[str, Any]] = []
        self.all_received = asyncio.Event()
        self.joined: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.reader = asyncio.create_task(self.read())

    async def join(self) -> None:
        await self.client.send("webrtc:join-room", {"callRoomId": ROOM}, id=f"join-{self.name}")
        await self.offer_to_existing(await asyncio.wait_for(self.joined, MESH_TIMEOUT_SECS))

    async def read(self) -> None:
        """Handle the server's frames, one at a time, until the socket closes."""
        with contextlib.suppress(ConnectionClosed):
            async for text in self.client.connection:
                frame = json.loads(text)
                event, data = frame["event"], frame["data"]
                if event == "webrtc:room-joined":
                    self.joined.set_result(data)
                elif event == "webrtc:participant-joined":
                    self.usernames[data["participant"]["socketId"]] = data["participant"]["username"]
                elif event == "webrtc:offer":
                    await self.answer(data["fromSocketId"], data["offer"])
                elif event == "webrtc:answer":
                    await self.answered(data)
                elif event == "webrtc:signaling-error":
                    self.errors.append(data)

    async def send_frame(self, event: str, data: dict[str, Any]) -> None:
        await self.client.send(event, data)

    def attach(self, channel: RTCDataChannel, socket_id: str) -> None:
        """Greet the other end once the channel is open; note its greeting."""

        def on_message(message: str) -> None:
            self.received[self.usernames.get(socket_id, socket_id)] = message
            if len(self.received) == self.expected:
                self.all_received.set()

        def greet() -> None:
            channel.send(f"hello from {self.name}")

        channel.on("message", on_message)
        if channel.readyState == "open":
            greet()
        else:
            channel.on("open", greet)

    def local_addresses(self) -> set[str]:
        return {
            candidate.ip
            for connection in self.connections.values()
            for candidate in connection.sctp.transport.transport.iceGatherer.getLocalCandidates()
        }

    async def close(self) -> None:
        await self.close_connections()
        await self.client.close()
        await self.reader


async def test_three_aiortc_peers_exchange_a_message_on_every_data_channel(server: Server) -> None:
    peers: list[MeshPeer] = []
    try:
        started = time.perf_counter()
        for name in PEERS:
            peer = MeshPeer(name, await WsClient.open(server.ws, server.token(name)), expected=len(PEERS) - 1)
            peers.append(peer)
            await peer.join()
        await asyncio.wait_for(asyncio.gather(*(peer.all_received.wait() for peer in peers)), MESH_TIMEOUT_SECS)
        print(f"\naiortc mesh of {len(PEERS)}: first join to every message in {time.perf_counter() - started:.3f}s")

        for peer in peers:
            others = [name for name in PEERS if name != peer.name]
            assert peer.received == {name: f"hello from {name}" for name in others}
            assert len(peer.connections) == len(others)
            assert all(c.connectionState == "connected" for c in peer.connections.values())
            assert peer.local_addresses() == {LOOPBACK}
            assert peer.errors == []
    finally:
        await asyncio.gather(*(peer.close() for peer in peers), return_exceptions=True)
