"""Tests that real WebRTC peers (aiortc) negotiate a full mesh of data channels through a
real daphne process, over the signaling protocol alone, and exchange a message on each."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from websockets.exceptions import ConnectionClosed

from tests.servers import Server
from tests.wsclient import WsClient

PEERS = ("alice", "bob", "carol")
ROOM = "aiortc-mesh"
MESH_TIMEOUT_SECS = 30.0  # generous for a loaded CI machine; the wait ends on the last message
LOOPBACK = "127.0.0.1"


@pytest.fixture(autouse=True)
def loopback_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice offers host candidates on every interface except loopback; offer loopback only,
    so that the peers' traffic stays on 127.0.0.1 whatever interfaces the machine has."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [LOOPBACK])


class MeshPeer:
    """One participant: a websocket to the server and one peer connection per other participant.

    As in ``signaling.js``, the newcomer offers to every existing participant (and opens the
    data channel); existing participants answer. aiortc gathers its candidates before
    ``setLocalDescription`` returns, so they travel inside the SDP and nothing is trickled.
    """

    def __init__(self, name: str, client: WsClient, expected: int) -> None:
        self.name = name
        self.client = client
        self.expected = expected
        self.connections: dict[str, RTCPeerConnection] = {}
        self.usernames: dict[str, str] = {}  # socketId → username
        self.received: dict[str, str] = {}  # sender's username → its message
        self.errors: list[dict[str, Any]] = []
        self.all_received = asyncio.Event()
        self.joined: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.reader = asyncio.create_task(self.read())

    async def join(self) -> None:
        await self.client.send("webrtc:join-room", {"callRoomId": ROOM}, id=f"join-{self.name}")
        joined = await asyncio.wait_for(self.joined, MESH_TIMEOUT_SECS)
        for participant in joined["existingParticipants"]:
            self.usernames[participant["socketId"]] = participant["username"]
            await self.offer(participant["socketId"])

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
                    await self.connections[data["fromSocketId"]].setRemoteDescription(
                        RTCSessionDescription(sdp=data["answer"]["sdp"], type=data["answer"]["type"])
                    )
                elif event == "webrtc:signaling-error":
                    self.errors.append(data)

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

    async def send_description(self, event: str, key: str, socket_id: str, connection: RTCPeerConnection) -> None:
        description = connection.localDescription
        await self.client.send(
            event,
            {"callRoomId": ROOM, "targetSocketId": socket_id, key: {"type": description.type, "sdp": description.sdp}},
        )

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
        for connection in self.connections.values():
            await connection.close()
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
