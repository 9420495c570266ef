"""Tests that overload holds clients back instead of growing the server or killing
consumers (issue 7): on real daphne and uvicorn processes, a client that sends faster
than the server relays is slowed by TCP backpressure and loses nothing, so do several
flooding one recipient (on the native and the Socket.IO endpoint), and frames for a
client that stops reading are refused to their senders with ``internal-error`` while
the connections stay usable."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Iterator

import pytest

from tests.servers import Server, demo_server
from tests.socketio_raw import RawWebsocket, decode_event, event_packet
from tests.wsclient import WsClient

FLOOD_FRAMES = 5000
# Makes an offer frame just under 64 KiB; random, so that permessage-deflate (which
# uvicorn negotiates) cannot shrink it.
FILLER = "a=x-filler:" + secrets.token_urlsafe(45_000) + "\r\n"
MAX_BIG_OFFERS = 1000  # 60 MB, far more than any buffer between the server and a stalled reader
DEADLINE_SECS = 60.0


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, kind: str) -> Iterator[Server]:
    # A flood is the point here: the per-connection limit must not be what stops it.
    flood_limits = {"CALLS_RATE_LIMIT": "100000", "CALLS_RATE_BURST": "100000"}
    with demo_server(tmp_path_factory.mktemp(kind), kind, **flood_limits) as server:
        yield server


async def pair_in_room(server: Server, room: str) -> tuple[WsClient, WsClient]:
    alice = await WsClient.open(server.ws, server.token("alice"))
    await alice.join(room)
    bob = await WsClient.open(server.ws, server.token("bob"))
    await bob.join(room)
    await alice.expect("webrtc:participant-joined")
    return alice, bob


async def test_a_flooding_sender_is_slowed_down_and_loses_nothing(server: Server, kind: str) -> None:
    """Tests that 5,000 candidates sent as fast as the socket takes them all arrive, in
    order; under daphne, the server paused reading the sender's socket to get there."""
    paused_before = server.metric('calls_backpressure_total{direction="inbound"}')
    alice, bob = await pair_in_room(server, "flood")
    frames = [
        json.dumps(
            {
                "event": "webrtc:ice-candidate",
                "data": {"callRoomId": "flood", "targetSocketId": bob.socket_id, "candidate": f"candidate:{i} 1 udp"},
            }
        )
        for i in range(FLOOD_FRAMES)
    ]

    async def flood() -> None:
        for frame in frames:
            await alice.connection.send(frame)

    async def receive_all() -> list[str]:
        received = []
        while len(received) < FLOOD_FRAMES:
            frame = await bob.expect("webrtc:ice-candidate", timeout=DEADLINE_SECS)
            received.append(frame["data"]["candidate"])
        return received

    async with asyncio.timeout(DEADLINE_SECS):
        _, received = await asyncio.gather(flood(), receive_all())
    assert received == [f"candidate:{i} 1 udp" for i in range(FLOOD_FRAMES)]
    await alice.expect_silence()
    if kind == "daphne":
        # uvicorn pauses reading after every frame by itself; daphne needed our flow control.
        assert server.metric('calls_backpressure_total{direction="inbound"}') > paused_before
    await alice.close()
    await bob.close()


async def test_frames_for_a_client_that_stops_reading_are_refused_to_their_sender(server: Server, kind: str) -> None:
    """Tests that big offers to a client that reads nothing are, once the buffers on the
    way are full, answered ``internal-error`` to the sender; that every offer not refused
    reaches the stalled client, in order, once it reads; and that both connections and
    the room still work."""
    alice, bob = await pair_in_room(server, "stall")
    bob.connection.transport.pause_reading()  # bob's client stops reading its socket
    refused: list[int] = []
    first_refusal = asyncio.Event()
    sent = 0

    async def send_until_refused() -> None:
        nonlocal sent
        while not refused and sent < MAX_BIG_OFFERS:
            sdp = f"v=0\r\na=x-seq:{sent}\r\n{FILLER}"
            offer = {"callRoomId": "stall", "targetSocketId": bob.socket_id, "offer": {"type": "offer", "sdp": sdp}}
            await alice.send("webrtc:offer", offer, id=sent)
            sent += 1
            await asyncio.sleep(0)  # let the error reader run

    async def read_replies() -> None:
        while True:
            frame = await alice.receive(timeout=DEADLINE_SECS)
            if frame["event"] == "webrtc:room-joined":
                all_answered.set()
                continue
            if frame["event"] == "webrtc:ack":  # relayed: the reply to an offer with an id
                continue
            assert frame["event"] == "webrtc:signaling-error", frame
            assert frame["data"]["error"] == "internal-error", frame
            assert frame["data"]["event"] == "webrtc:offer"
            refused.append(frame["id"])
            first_refusal.set()

    all_answered = asyncio.Event()
    reader = asyncio.create_task(read_replies())
    try:
        await send_until_refused()
        try:
            await asyncio.wait_for(first_refusal.wait(), DEADLINE_SECS)
        except TimeoutError:
            pytest.fail(f"{sent} offers of 60 KB to a client that reads nothing were all accepted")
        # Offers already on their way when the first refusal came back are each either
        # refused or delivered. alice's frames are handled in order, so once a join of
        # the room she is in is answered, all of them have been.
        await alice.send("webrtc:join-room", {"callRoomId": "stall"})
        await asyncio.wait_for(all_answered.wait(), DEADLINE_SECS)
    finally:
        reader.cancel()

    bob.connection.transport.resume_reading()
    accepted = [i for i in range(sent) if i not in set(refused)]
    delivered = []
    while len(delivered) < len(accepted):
        frame = await bob.expect("webrtc:offer", timeout=10)
        delivered.append(int(re.search(r"a=x-seq:(\d+)", frame["data"]["offer"]["sdp"]).group(1)))
    assert delivered == accepted
    await bob.expect_silence()

    # Nobody was disconnected: both still relay, in both directions.
    await bob.send("webrtc:ice-candidate", {"callRoomId": "stall", "targetSocketId": alice.socket_id, "candidate": ""})
    await alice.expect("webrtc:ice-candidate")
    await alice.send("webrtc:ice-candidate", {"callRoomId": "stall", "targetSocketId": bob.socket_id, "candidate": ""})
    await bob.expect("webrtc:ice-candidate")
    if kind == "daphne":
        assert server.metric('calls_backpressure_total{direction="outbound"}') > 0
    assert server.process.poll() is None
    await alice.close()
    await bob.close()


SENDERS = 4
FRAMES_PER_SENDER = 1500  # each sender's burst is far over one mailbox's capacity (100)


class Endpoint:
    """One connection on either endpoint, as far as this test needs: send an event, read
    the next one (event name and data), as docs/protocol.md §1 frames it on each."""

    def __init__(self, native: WsClient | None = None, sio: RawWebsocket | None = None) -> None:
        self.native, self.sio = native, sio

    @classmethod
    async def open(cls, server: Server, framing: str, user: str) -> Endpoint:
        if framing == "native":
            return cls(native=await WsClient.open(server.ws, server.token(user)))
        sio = await RawWebsocket.open(server.port)
        await sio.connect({"token": server.token(user)})
        return cls(sio=sio)

    @property
    def socket_id(self) -> str:
        return self.native.socket_id if self.native is not None else self.sio.socket_id  # type: ignore[union-attr]

    def frame(self, event: str, data: dict) -> str:
        return json.dumps({"event": event, "data": data}) if self.native is not None else event_packet(event, data)

    async def send_raw(self, frame: str) -> None:
        if self.native is not None:
            await self.native.connection.send(frame)
        else:
            await self.sio.send(frame)  # type: ignore[union-attr]

    async def next_event(self) -> tuple[str, dict]:
        if self.native is not None:
            frame = await self.native.receive(timeout=DEADLINE_SECS)
            return frame["event"], frame["data"]
        return decode_event(await self.sio.receive(timeout=DEADLINE_SECS))  # type: ignore[union-attr]

    async def close(self) -> None:
        await (self.native or self.sio).close()  # type: ignore[union-attr]


@pytest.mark.parametrize("framing", ["native", "socketio"])
async def test_several_flooding_senders_to_one_recipient_lose_nothing(server: Server, framing: str) -> None:
    """Tests that four connections each sending 1,500 candidates to one recipient as fast
    as their sockets take them get every one delivered, in order, and none refused: each
    connection's queued frames are handled a frame at a time among the others', so the
    recipient's mailbox writer keeps up instead of overflowing behind a burst."""
    room = f"many-to-one-{framing}"
    bob = await Endpoint.open(server, framing, "bob")
    await bob.send_raw(bob.frame("webrtc:join-room", {"callRoomId": room}))
    assert (await bob.next_event())[0] == "webrtc:room-joined"
    senders = [await Endpoint.open(server, framing, "alice") for _ in range(SENDERS)]
    for sender in senders:
        await sender.send_raw(sender.frame("webrtc:join-room", {"callRoomId": room}))
        assert (await sender.next_event())[0] == "webrtc:room-joined"

    def candidate(sender: int, i: int) -> str:
        return f"candidate:{sender}-{i} 1 udp"

    async def flood(index: int, sender: Endpoint) -> None:
        for i in range(FRAMES_PER_SENDER):
            data = {"callRoomId": room, "targetSocketId": bob.socket_id, "candidate": candidate(index, i)}
            await sender.send_raw(sender.frame("webrtc:ice-candidate", data))
        # The sentinel: frames are handled in order, so its answer comes after the answer
        # (an error) to any candidate refused.
        await sender.send_raw(sender.frame("webrtc:join-room", {"callRoomId": room}))

    async def replies_until_sentinel(sender: Endpoint) -> list[tuple[str, dict]]:
        replies = []
        while (reply := await sender.next_event())[0] != "webrtc:room-joined":
            if reply[0] != "webrtc:participant-joined":  # the senders joining after it
                replies.append(reply)
        return replies

    async def received_by_bob() -> dict[str, list[str]]:
        got: dict[str, list[str]] = {}
        while sum(map(len, got.values())) < SENDERS * FRAMES_PER_SENDER:
            event, data = await bob.next_event()
            if event == "webrtc:ice-candidate":
                got.setdefault(data["fromSocketId"], []).append(data["candidate"])
        return got

    bob_receives = asyncio.create_task(received_by_bob())
    try:
        async with asyncio.timeout(DEADLINE_SECS):
            *_, refused = await asyncio.gather(
                *(flood(i, s) for i, s in enumerate(senders)),
                asyncio.gather(*(replies_until_sentinel(s) for s in senders)),
            )
            assert refused == [[]] * SENDERS, [r[:3] for r in refused]
            got = await bob_receives
    finally:
        bob_receives.cancel()
    assert got == {s.socket_id: [candidate(i, n) for n in range(FRAMES_PER_SENDER)] for i, s in enumerate(senders)}
    for endpoint in (bob, *senders):
        await endpoint.close()
