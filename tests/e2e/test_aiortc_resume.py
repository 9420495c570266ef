"""Tests that a call of real WebRTC peers (aiortc, data channels in a full mesh) carries
on untouched while the signaling processes of some of its peers are stopped with SIGTERM
(docs/protocol.md §5 rule 4, §6): each such peer's client gets 1001, reconnects to the
next process with ``?resume=`` and is resumed as itself within its backoff and two
seconds; the data channels never stop, no peer connection is renegotiated or changes
state, and nobody is told anyone left, also once the resume grace is over.

Three daphne processes share one Redis; peer i starts on process i. Each peer's list of
processes names the survivor right after its own, as a client configured with the
deployment's processes would try them in turn."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCDataChannel, RTCPeerConnection

from tests.e2e.test_aiortc_mesh import AiortcPeer
from tests.redis_server import RedisServer
from tests.servers import Server, ServerDatabase, prepare_database, start_daphnes
from tests.wsclient import ResumingClient, wait_until

PEERS = ("alice", "bob", "carol")
ROOM = "aiortc-resume"
PRESENCE_TTL_SECS = 6
GRACE_SECS = 8
SHUTDOWN_TIMEOUT_SECS = 5
EXIT_MARGIN_SECS = 5.0
BACKOFF_SECS = 0.5
RESUME_WITHIN_SECS = BACKOFF_SECS + 2.0
MARGIN_SECS = 3.0
MESH_TIMEOUT_SECS = 30.0
MESSAGE_INTERVAL_SECS = 0.05  # each peer sends on each channel 20 times a second
MAX_SILENCE_SECS = 1.5  # the longest a channel may go without a message around the stop
MESSAGES_AFTER = 20  # each channel carries at least this many after the last resume

pytestmark = pytest.mark.usefixtures("loopback_candidates")  # tests/e2e/conftest.py


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[Server]]:
    redis = RedisServer(tmp_path / "redis").start()
    servers: list[Server] = []
    try:
        env = ServerDatabase("sqlite", tmp_path / "db.sqlite3").env(
            REDIS_URL=redis.url,
            CALLS_PRESENCE_TTL_SECS=str(PRESENCE_TTL_SECS),
            CALLS_RESUME_GRACE_SECS=str(GRACE_SECS),
            CALLS_SHUTDOWN_TIMEOUT_SECS=str(SHUTDOWN_TIMEOUT_SECS),
        )
        prepare_database(env)
        servers = start_daphnes(env, [tmp_path / f"daphne{i}.log" for i in range(3)])
        yield servers
    finally:
        for server in servers:
            server.stop(signal.SIGKILL)
        redis.stop()


class ResumingPeer(AiortcPeer):
    """One participant: a ``ResumingClient`` and one peer connection per other
    participant, negotiated as in ``test_aiortc_mesh.py`` (``AiortcPeer``). Every channel
    carries a numbered message every ``MESSAGE_INTERVAL_SECS``; what arrives is noted with
    its time, per sender."""

    def __init__(self, name: str, urls: list[str], token: str, changed: asyncio.Event) -> None:
        super().__init__(name, ROOM)
        self.client = ResumingClient(urls, token, backoff=BACKOFF_SECS, on_frame=self.on_frame, changed=changed)
        self.changed = changed
        self.channels: dict[str, RTCDataChannel] = {}
        self.arrivals: dict[str, list[tuple[float, int]]] = {}  # sender's username → (time, number)
        self.sentinels: set[str] = set()
        self.negotiations: list[tuple[float, str]] = []  # (time, event) of offers and answers
        self.departures: list[dict[str, Any]] = []
        self.joins: list[tuple[float, dict[str, Any]]] = []
        self.state_changes: list[tuple[float, str, str]] = []
        self.errors: list[dict[str, Any]] = []
        self.replies: dict[str, dict[str, Any]] = {}
        self.pump: asyncio.Task[None] | None = None

    async def join(self) -> None:
        await self.client.start()
        assert await self.client.send("webrtc:join-room", {"callRoomId": ROOM}, id=f"join-{self.name}")
        await wait_until(self.changed, lambda: f"join-{self.name}" in self.replies, MESH_TIMEOUT_SECS, "joined")
        await self.offer_to_existing(self.replies.pop(f"join-{self.name}")["data"])
        self.pump = asyncio.create_task(self.send_messages())

    async def on_frame(self, frame: dict[str, Any]) -> None:
        event, data = frame["event"], frame["data"]
        if "id" in frame:
            self.replies[str(frame["id"])] = frame
        elif event == "webrtc:participant-joined":
            self.joins.append((time.monotonic(), data))
            self.usernames[data["participant"]["socketId"]] = data["participant"]["username"]
        elif event == "webrtc:participant-left":
            self.departures.append(data)
        elif event == "webrtc:offer":
            self.negotiations.append((time.monotonic(), event))
            await self.answer(data["fromSocketId"], data["offer"])
        elif event == "webrtc:answer":
            self.negotiations.append((time.monotonic(), event))
            await self.answered(data)
        elif event == "webrtc:ice-candidate":
            self.sentinels.add(f"{self.usernames.get(data['fromSocketId'])}:{data['candidate']}")
        else:
            self.errors.append(frame)

    def connection(self, socket_id: str) -> RTCPeerConnection:
        connection = super().connection(socket_id)

        @connection.on("connectionstatechange")
        def on_state() -> None:
            self.state_changes.append((time.monotonic(), socket_id, connection.connectionState))

        return connection

    async def send_frame(self, event: str, data: dict[str, Any]) -> None:
        assert await self.client.send(event, data)

    def attach(self, channel: RTCDataChannel, socket_id: str) -> None:
        self.channels[socket_id] = channel

        def on_message(message: str) -> None:
            sender = self.usernames.get(socket_id, socket_id)
            self.arrivals.setdefault(sender, []).append((time.monotonic(), int(message)))
            self.changed.set()

        channel.on("message", on_message)

    async def send_messages(self) -> None:
        sequence = 0
        while True:
            await asyncio.sleep(MESSAGE_INTERVAL_SECS)  # the pace of the call's traffic
            for channel in list(self.channels.values()):
                if channel.readyState == "open":
                    channel.send(str(sequence))
            sequence += 1

    def received_since(self, sender: str, moment: float) -> int:
        return sum(1 for at, _ in self.arrivals.get(sender, []) if at >= moment)

    async def close(self) -> None:
        if self.pump is not None:
            self.pump.cancel()
            await asyncio.gather(self.pump, return_exceptions=True)
        await self.close_connections()
        await self.client.stop()


@pytest.mark.parametrize("stopped", [1, 2], ids=["one-process", "two-processes"])
async def test_a_call_of_aiortc_peers_survives_the_sigterm_of_their_signaling_processes(
    cluster: list[Server], stopped: int
) -> None:
    urls = [server.ws for server in cluster]
    survivor = len(cluster) - 1
    changed = asyncio.Event()
    peers: list[ResumingPeer] = []
    try:
        for index, name in enumerate(PEERS):
            order = [index] + [survivor] * (index != survivor) + [i for i in range(3) if i not in (index, survivor)]
            peer = ResumingPeer(name, [urls[i] for i in order], cluster[0].token(name), changed)
            peers.append(peer)
            await peer.join()
        others = {peer.name: [p.name for p in peers if p is not peer] for peer in peers}

        def flowing(moment: float, count: int) -> bool:
            return all(peer.received_since(other, moment) >= count for peer in peers for other in others[peer.name])

        await wait_until(changed, lambda: flowing(0.0, 5), MESH_TIMEOUT_SECS, "every data channel carries messages")
        mesh_up_at = time.monotonic()
        connections = {peer.name: dict(peer.connections) for peer in peers}
        assert all(c.connectionState == "connected" for peer in peers for c in peer.connections.values())

        stopped_peers = peers[:stopped]
        term_at = time.monotonic()
        for server in cluster[:stopped]:
            server.process.send_signal(signal.SIGTERM)

        def resumed() -> bool:
            return all(p.client.outages and p.client.outages[-1].gap for p in stopped_peers) or any(
                p.client.failed.is_set() for p in peers
            )

        await wait_until(changed, resumed, RESUME_WITHIN_SECS + MARGIN_SECS + 5.0, "the stopped peers resumed")
        failures = [(p.name, p.client.outages, p.client.crash) for p in peers if p.client.failed.is_set()]
        assert not failures, failures
        for server in cluster[:stopped]:
            await asyncio.to_thread(server.process.wait, SHUTDOWN_TIMEOUT_SECS + EXIT_MARGIN_SECS)
        last_resume = max(p.client.outages[-1].resumed_at or 0.0 for p in stopped_peers)
        await wait_until(
            changed,
            lambda: flowing(last_resume, MESSAGES_AFTER),
            MESH_TIMEOUT_SECS,
            "the data channels carry on after the resumes",
        )

        # Signaling works through the resumed connections, in every direction …
        async def sentinel_round(tag: str) -> None:
            for peer in peers:
                for socket_id, name in peer.usernames.items():
                    data = {"callRoomId": ROOM, "targetSocketId": socket_id, "candidate": f"{tag}-{name}"}
                    assert await peer.client.send("webrtc:ice-candidate", data, id=f"{tag}-{peer.name}-{name}")
            expected = {peer.name: {f"{other}:{tag}-{peer.name}" for other in others[peer.name]} for peer in peers}
            await wait_until(
                changed,
                lambda: (
                    all(expected[p.name] <= p.sentinels for p in peers)
                    and all(f"{tag}-{p.name}-{o}" in p.replies for p in peers for o in others[p.name])
                ),
                10.0,
                f"the {tag} candidates relayed and acknowledged",
            )
            for peer in peers:
                for other in others[peer.name]:
                    ack = peer.replies.pop(f"{tag}-{peer.name}-{other}")
                    assert ack["event"] == "webrtc:ack", ack

        await sentinel_round("resumed")
        # … and once the grace of every close is over, nobody has been told anything.
        last_close = max(p.client.outages[-1].closed_at for p in stopped_peers)
        await asyncio.sleep(max(0.0, last_close + GRACE_SECS + MARGIN_SECS - time.monotonic()))  # grace over
        await sentinel_round("after-grace")
        end = time.monotonic()

        report = []
        for peer in peers:
            assert peer.departures == [], f"{peer.name} was told {peer.departures}"
            assert [j for at, j in peer.joins if at > mesh_up_at] == [], f"{peer.name} saw a join"
            assert peer.errors == [], peer.errors
            assert [n for n in peer.negotiations if n[0] > mesh_up_at] == [], f"{peer.name} renegotiated"
            assert [s for s in peer.state_changes if s[0] > mesh_up_at] == [], f"{peer.name}: {peer.state_changes}"
            assert peer.connections == connections[peer.name], f"{peer.name}'s peer connections were replaced"
            assert all(c.connectionState == "connected" for c in peer.connections.values())
            for other in others[peer.name]:
                arrivals = peer.arrivals[other]
                numbers = [n for _, n in arrivals]
                assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), f"{other}→{peer.name} lost some"
                window = [at for at, _ in arrivals if term_at - 1.0 <= at <= end]
                silence = max(b - a for a, b in itertools.pairwise(window))
                assert silence < MAX_SILENCE_SECS, f"{other}→{peer.name} stopped for {silence:.2f}s"
        for peer in stopped_peers:
            [outage] = peer.client.outages
            assert outage.close_code == 1001, outage
            assert outage.to_url == urls[survivor], outage
            assert outage.gap is not None and outage.gap <= RESUME_WITHIN_SECS, outage
            assert outage.resumed == {"socketId": peer.client.socket_id, "callRoomId": ROOM, "missed": outage.missed}
            report.append(f"{peer.name} resumed {outage.gap:.2f}s after its close (missed {outage.missed})")
        for peer in peers[stopped:]:
            assert peer.client.outages == [], peer.client.outages
        print(f"\nSIGTERM of {stopped} of 3 processes under an aiortc call: " + "; ".join(report))
    finally:
        await asyncio.gather(*(peer.close() for peer in peers), return_exceptions=True)
