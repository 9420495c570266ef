"""Tests that identities cannot be guessed and that probing another room reveals
nothing about who is in it."""

from __future__ import annotations

import base64
import json

import pytest

from accounts.models import User
from calls.services import new_socket_id
from tests.calls.conftest import InRoom

pytestmark = pytest.mark.django_db(transaction=True)


def test_socket_ids_carry_128_random_bits() -> None:
    ids = {new_socket_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    for socket_id in list(ids)[:100]:
        assert len(base64.urlsafe_b64decode(socket_id + "==")) == 16


async def test_probing_another_room_reveals_none_of_its_participants(
    in_room: InRoom, alice: User, bob: User, carol: User
) -> None:
    target_a, target_b = await in_room("private", alice, bob)
    (prober,) = await in_room("mine", carol)
    probes = [
        ("webrtc:offer", {"callRoomId": "private", "targetSocketId": target_a.socket_id,
                          "offer": {"type": "offer", "sdp": "v=0"}}),
        ("webrtc:answer", {"callRoomId": "mine", "targetSocketId": target_b.socket_id,
                           "answer": {"type": "answer", "sdp": "v=0"}}),
        ("webrtc:ice-candidate", {"callRoomId": "private", "candidate": "x"}),
        ("webrtc:leave-room", {"callRoomId": "private"}),
        ("webrtc:offer", {"callRoomId": "private", "targetSocketId": "guess",
                          "offer": {"type": "offer", "sdp": "v=0"}}),
    ]  # fmt: skip
    # Names the prober could not know; the socketId it guessed right may only come back
    # as what it sent, never as a participant.
    hidden = {target_b.socket_id, "alice", "bob", "Alice A.", "Bob B."}
    for event, data in probes:
        await prober.send(event, data)
        error = await prober.expect("webrtc:signaling-error")
        reply = json.dumps(error)
        assert not {name for name in hidden if name in reply}, (event, reply)
        assert set(error["data"]) <= {"error", "message", "details", "event", "timestamp"}
        assert error["data"]["error"] in {"not-in-room", "participant-not-found"}
    await target_a.expect_silence()
    await target_b.expect_silence()
