"""Tests that signaling is logged for operators without SDP bodies or tokens."""

from __future__ import annotations

import logging

import pytest

from accounts.models import User
from tests.conftest import ConnectFactory

pytestmark = pytest.mark.django_db(transaction=True)

SDP_MARKER = "v=0 o=- SECRET-SDP-BODY"
CANDIDATE_MARKER = "candidate:842163049 1 udp 1677729535 203.0.113.7 3478 typ srflx"


async def test_joins_leaves_errors_and_relays_are_logged_without_sdp_or_tokens(
    connect: ConnectFactory, alice: User, bob: User, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="calls")
    a = await connect(alice)
    b = await connect(bob)
    await a.join("logged")
    await b.join("logged")
    await a.expect("webrtc:participant-joined")
    offer = {"type": "offer", "sdp": SDP_MARKER}
    await a.send("webrtc:offer", {"callRoomId": "logged", "targetSocketId": b.socket_id, "offer": offer})
    await b.expect("webrtc:offer")
    await b.send("webrtc:ice-candidate", {"callRoomId": "logged", "candidate": CANDIDATE_MARKER})
    await a.expect("webrtc:ice-candidate")
    await a.send("webrtc:answer", {"callRoomId": "logged", "targetSocketId": "nobody", "answer": offer})
    await a.expect_error("participant-not-found")
    await a.leave("logged")
    await b.close()

    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "calls"]
    text = "\n".join(message for _, message in lines)
    assert SDP_MARKER not in text
    assert "203.0.113.7" not in text
    for token_part in (a.communicator.scope["query_string"].decode().split("token=")[-1][-20:],):
        assert token_part not in text

    def logged(level: int, *parts: str) -> bool:
        return any(lvl == level and all(p in message for p in parts) for lvl, message in lines)

    context = f"socketId={a.socket_id} userId={a.user_id}"
    assert logged(logging.INFO, "join", "room=logged", context)
    assert logged(logging.INFO, "leave", "room=logged", context)
    assert logged(logging.INFO, "disconnected", "room=logged", f"socketId={b.socket_id}")
    assert logged(logging.INFO, "participant-not-found", "room=logged", context)
    assert logged(logging.DEBUG, "relay webrtc:offer", f"from={a.socket_id}", f"to={b.socket_id}")
    assert logged(logging.DEBUG, "relay webrtc:ice-candidate", f"from={b.socket_id}", "to=*")


async def test_signaling_errors_are_logged_at_most_once_a_second_per_connection_and_counted(
    connect: ConnectFactory, alice: User, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="calls")
    client = await connect(alice)

    for _ in range(50):
        await client.send("webrtc:leave-room", {"callRoomId": "nowhere"})
        await client.expect_error("not-in-room")

    lines = [r.getMessage() for r in caplog.records if r.name == "calls" and "signaling error" in r.getMessage()]
    assert 1 <= len(lines) <= 2, lines  # the 50 errors took well under two seconds
    assert "(0 more since the last line)" in lines[0]
