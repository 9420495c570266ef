"""What a parked participant costs (docs/benchmarks.md, "Resume"): memory per parked
participant and per message buffered for one, in each presence store.

    .venv/bin/python -m bench.parked [--participants 2000] [--messages 50]

The in-process store is measured with tracemalloc in this process; the Redis store with
``used_memory`` of a fresh redis-server it starts (on loopback, stopped at the end). A
buffered message is a relayed ICE candidate as the server buffers it (310 bytes of JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import tracemalloc
from pathlib import Path

from calls.presence.base import Member, Parking, Participant, Presence, RoomSession
from calls.presence.memory import InMemoryPresence
from calls.presence.redis import RedisPresence
from tests.redis_server import RedisServer

ROOM_SIZE = 16
CANDIDATE = (
    "webrtc:ice-candidate",
    b'{"callRoomId":"room-0001","fromSocketId":"Q2mVn0c3yq4yB8m1hXgT1w","fromUserId":"12345","candidate":'
    b'{"candidate":"candidate:842163049 1 udp 1677729535 203.0.113.7 61234 typ srflx raddr 10.0.0.7 rport 61234 '
    b'generation 0 ufrag Xk2p network-cost 999","sdpMid":"0","sdpMLineIndex":0},"sdpMid":"0","sdpMLineIndex":0}',
)


def _member(n: int) -> Member:
    socket_id = f"socket-{n:06d}-abcdefghij"
    participant = Participant(socket_id, str(n), f"user{n}", f"User {n}", "2026-12-01T12:00:00.000Z")
    return Member(participant, f"calls.inbox!abcdef#{socket_id}")


async def _fill(presence: Presence, participants: int) -> list[str]:
    ids = []
    for n in range(participants):
        member = _member(n)
        room = f"room-{n // ROOM_SIZE:05d}"
        metadata = {"callType": "video", "createdAt": "2026-12-01T12:00:00.000Z", "createdBy": "1"}
        await presence.join(
            new_session=RoomSession(room, f"session-{room}", metadata),
            member=member,
            capacity=ROOM_SIZE,
            group_ids=frozenset(),
        )
        ids.append(member.participant.socket_id)
    return ids


async def _park_all(presence: Presence, ids: list[str]) -> None:
    for n, socket_id in enumerate(ids):
        await presence.park(Parking(socket_id, str(n), 0, 0, 60, 256, fence="calls.inbox!abcdef"))


async def _buffer(presence: Presence, ids: list[str], messages: int) -> None:
    event, data = CANDIDATE
    for _ in range(messages):
        for socket_id in ids:
            # Each its own bytes, as messages from different senders are.
            await presence.buffer(socket_ids=[socket_id], message=(event, data[:-1] + b"}"))


async def measure_memory(participants: int, messages: int) -> tuple[float, float]:
    presence = InMemoryPresence()
    ids = await _fill(presence, participants)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    await _park_all(presence, ids)
    parked = tracemalloc.take_snapshot()
    await _buffer(presence, ids, messages)
    buffered = tracemalloc.take_snapshot()
    tracemalloc.stop()

    def grown(later: tracemalloc.Snapshot, earlier: tracemalloc.Snapshot) -> int:
        return sum(stat.size_diff for stat in later.compare_to(earlier, "filename"))

    return grown(parked, before) / participants, grown(buffered, parked) / (participants * messages)


async def measure_redis(participants: int, messages: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(Path(workdir)).start()
        presence = RedisPresence(server.url, lease_secs=30)
        try:
            ids = await _fill(presence, participants)

            async def used() -> int:
                return int((await presence.redis.info("memory"))["used_memory"])

            before = await used()
            await _park_all(presence, ids)
            parked = await used()
            await _buffer(presence, ids, messages)
            buffered = await used()
        finally:
            await presence.close()
            server.stop()
    return (parked - before) / participants, (buffered - parked) / (participants * messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=50)
    args = parser.parse_args()
    print(f"{args.participants} parked participants in rooms of {ROOM_SIZE}, {args.messages} candidates each")
    print(f"message: {len(CANDIDATE[1])} bytes of JSON")
    for name, measure in (("in-process", measure_memory), ("redis", measure_redis)):
        per_participant, per_message = asyncio.run(measure(args.participants, args.messages))
        line = f"{per_participant:7.0f} bytes per parked participant, {per_message:5.0f} per buffered message"
        print(f"{name:10}  {line}")


if __name__ == "__main__":
    main()
