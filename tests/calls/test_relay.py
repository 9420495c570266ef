"""Tests that offers, answers and ICE candidates are relayed as docs/protocol.md §4 and §5 rule 5 say."""

from __future__ import annotations

import json
from typing import Any

import pytest

from accounts.models import User
from tests.calls.conftest import InRoom, all_silent
from tests.conftest import Client, ConnectFactory

pytestmark = pytest.mark.django_db(transaction=True)

OFFER = {"type": "offer", "sdp": "v=0\r\no=- 46117317 2 IN IP4 127.0.0.1\r\ns=-\r\n"}
ANSWER = {"type": "answer", "sdp": "v=0\r\no=- 48224531 2 IN IP4 127.0.0.1\r\ns=-\r\n"}
CANDIDATE = "candidate:842163049 1 udp 1677729535 198.51.100.7 46154 typ srflx raddr 0.0.0.0 rport 0"
DESCRIPTIONS = {"webrtc:offer": ("offer", OFFER), "webrtc:answer": ("answer", ANSWER)}
RELAYED_EVENTS = ["webrtc:offer", "webrtc:answer", "webrtc:ice-candidate"]


def relay_data(event: str, room: str, target: str | None) -> dict[str, Any]:
    """A valid request ``data`` of ``event``, aimed at ``target`` (a candidate may have none)."""
    data: dict[str, Any] = {"callRoomId": room}
    if target is not None:
        data["targetSocketId"] = target
    if event == "webrtc:ice-candidate":
        data["candidate"] = CANDIDATE
    else:
        field, description = DESCRIPTIONS[event]
        data[field] = description
    return data


def sent_by(sender: Client, room: str = "r", **fields: Any) -> dict[str, Any]:
    """What a recipient must see: the room, the sender's real identity and ``fields``."""
    return {"callRoomId": room, "fromSocketId": sender.socket_id, "fromUserId": sender.user_id, **fields}


# ---------------------------------------------------------------------------
# Delivery to the target only, from the real sender
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("event", list(DESCRIPTIONS))
async def test_an_offer_or_answer_reaches_only_its_target_from_the_real_sender(
    in_room: InRoom, alice: User, bob: User, carol: User, event: str
) -> None:
    sender, target, bystander = await in_room("r", alice, bob, carol)
    field, description = DESCRIPTIONS[event]
    spoofed = {
        **relay_data(event, "r", target.socket_id),
        "fromSocketId": bystander.socket_id,
        "fromUserId": bystander.user_id,
        "x-future-field": {"kept": False},
    }

    await sender.send(event, spoofed, id="c-1")

    assert await target.receive() == {"event": event, "data": sent_by(sender, **{field: description})}
    assert await sender.receive() == {"event": "webrtc:ack", "data": {"event": event}, "id": "c-1"}
    await all_silent(sender, target, bystander)


async def test_a_targeted_candidate_reaches_only_its_target(
    in_room: InRoom, alice: User, bob: User, carol: User
) -> None:
    sender, target, bystander = await in_room("r", alice, bob, carol)

    await sender.send("webrtc:ice-candidate", {**relay_data("webrtc:ice-candidate", "r", target.socket_id)})

    relayed = await target.expect("webrtc:ice-candidate")
    assert relayed["data"] == sent_by(sender, candidate=CANDIDATE)
    await all_silent(sender, target, bystander)


@pytest.mark.parametrize(
    ("event", "field", "sent", "relayed"),
    [
        ("webrtc:offer", "offer", {**OFFER, "x-secret": "leak"}, OFFER),
        ("webrtc:answer", "answer", {**ANSWER, "x-secret": "leak"}, ANSWER),
        (
            "webrtc:ice-candidate",
            "candidate",
            {"candidate": CANDIDATE, "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "EsAw", "x-secret": 1},
            {"candidate": CANDIDATE, "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "EsAw"},
        ),
    ],
    ids=["offer", "answer", "candidate"],
)
async def test_unknown_keys_nested_in_the_payload_are_never_relayed(
    in_room: InRoom, alice: User, bob: User, event: str, field: str, sent: dict[str, Any], relayed: dict[str, Any]
) -> None:
    sender, target = await in_room("r", alice, bob)

    await sender.send(event, {"callRoomId": "r", "targetSocketId": target.socket_id, field: sent})

    assert (await target.expect(event))["data"] == sent_by(sender, **{field: relayed})


async def test_an_answer_relays_no_sdp_mid_or_line_index(in_room: InRoom, alice: User, bob: User) -> None:
    """Tests that an answer carries only the fields of docs/protocol.md §4: the others are unknown keys."""
    sender, target = await in_room("r", alice, bob)

    await sender.send(
        "webrtc:answer", {**relay_data("webrtc:answer", "r", target.socket_id), "sdpMid": "0", "sdpMLineIndex": 0}
    )

    assert (await target.expect("webrtc:answer"))["data"] == sent_by(sender, answer=ANSWER)


@pytest.mark.parametrize(
    "placement",
    [{}, {"sdpMid": "audio", "sdpMLineIndex": 1}, {"sdpMid": None, "sdpMLineIndex": None}, {"sdpMLineIndex": 0}],
    ids=["absent", "given", "null", "index only"],
)
@pytest.mark.parametrize("event", ["webrtc:offer", "webrtc:ice-candidate"])
async def test_sdp_mid_and_line_index_are_relayed_exactly_when_given(
    in_room: InRoom, alice: User, bob: User, event: str, placement: dict[str, Any]
) -> None:
    sender, target = await in_room("r", alice, bob)
    data = relay_data(event, "r", target.socket_id)

    await sender.send(event, {**data, **placement})

    expected = {key: value for key, value in data.items() if key not in {"callRoomId", "targetSocketId"}}
    assert (await target.expect(event))["data"] == sent_by(sender, **expected, **placement)


# ---------------------------------------------------------------------------
# Candidates: forms and broadcast
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "candidate",
    [
        CANDIDATE,
        "",
        {"candidate": CANDIDATE, "sdpMid": "0", "sdpMLineIndex": 0},
        {"candidate": "", "sdpMid": None, "sdpMLineIndex": None, "usernameFragment": None},
    ],
    ids=["string", "end-of-candidates string", "object", "end-of-candidates object"],
)
async def test_a_candidate_is_relayed_as_given(in_room: InRoom, alice: User, bob: User, candidate: Any) -> None:
    sender, target = await in_room("r", alice, bob)

    await sender.send(
        "webrtc:ice-candidate", {"callRoomId": "r", "targetSocketId": target.socket_id, "candidate": candidate}
    )

    assert (await target.expect("webrtc:ice-candidate"))["data"] == sent_by(sender, candidate=candidate)


@pytest.mark.parametrize("no_target", [{}, {"targetSocketId": None}], ids=["omitted", "null"])
async def test_a_candidate_without_a_target_reaches_everyone_but_the_sender(
    in_room: InRoom, alice: User, bob: User, carol: User, no_target: dict[str, Any]
) -> None:
    sender, *others = await in_room("r", alice, bob, carol)

    await sender.send("webrtc:ice-candidate", {"callRoomId": "r", "candidate": CANDIDATE, **no_target})

    for other in others:
        assert (await other.expect("webrtc:ice-candidate"))["data"] == sent_by(sender, candidate=CANDIDATE)
    await all_silent(sender, *others)


# ---------------------------------------------------------------------------
# Targets that are not in the room
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["connected in no room", "unknown socket id"])
@pytest.mark.parametrize("event", list(DESCRIPTIONS))
async def test_an_offer_or_answer_to_a_target_not_in_the_room_is_participant_not_found(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, dave: User, event: str, target: str
) -> None:
    sender, member = await in_room("r", alice, bob)
    stranger = await connect(dave)
    target_id = stranger.socket_id if target == "connected in no room" else "no-such-socket"

    await sender.send(event, relay_data(event, "r", target_id))

    await sender.expect_error("participant-not-found", event=event)
    await all_silent(sender, member, stranger)


@pytest.mark.parametrize("target", ["connected in no room", "just left"])
async def test_a_candidate_to_a_target_not_in_the_room_is_dropped_silently(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, dave: User, target: str
) -> None:
    sender, member, leaver = await in_room("r", alice, bob, carol)
    stranger = await connect(dave)
    if target == "just left":
        await leaver.leave("r")
        await sender.expect("webrtc:participant-left")
        await member.expect("webrtc:participant-left")
    target_id = stranger.socket_id if target == "connected in no room" else leaver.socket_id

    await sender.send("webrtc:ice-candidate", relay_data("webrtc:ice-candidate", "r", target_id))

    await all_silent(sender, member, leaver, stranger)


# ---------------------------------------------------------------------------
# Senders that are not in the room
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "targeted"),
    [("webrtc:offer", True), ("webrtc:answer", True), ("webrtc:ice-candidate", True), ("webrtc:ice-candidate", False)],
)
async def test_a_sender_not_in_a_live_room_is_refused_with_not_in_room(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, dave: User, event: str, targeted: bool
) -> None:
    first, second = await in_room("r", alice, bob)
    outsider = await connect(dave)

    await outsider.send(event, relay_data(event, "r", first.socket_id if targeted else None))

    await outsider.expect_error("not-in-room", event=event)
    await all_silent(outsider, first, second)


@pytest.mark.parametrize("room", ["never created", "ended"])
@pytest.mark.parametrize("event", RELAYED_EVENTS)
async def test_a_relay_to_a_room_without_a_live_session_is_room_not_found(
    connect: ConnectFactory, alice: User, event: str, room: str
) -> None:
    sender = await connect(alice)
    if room == "ended":
        await sender.join("r")
        await sender.leave("r")

    await sender.send(event, relay_data(event, "r", "someone"))

    await sender.expect_error("room-not-found", event=event)


# ---------------------------------------------------------------------------
# Nothing crosses rooms
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "named_room", "error"),
    [
        ("webrtc:offer", "own", "participant-not-found"),
        ("webrtc:offer", "target's", "not-in-room"),
        ("webrtc:answer", "own", "participant-not-found"),
        ("webrtc:answer", "target's", "not-in-room"),
        ("webrtc:ice-candidate", "target's", "not-in-room"),
    ],
)
async def test_signaling_a_participant_of_another_room_is_refused_without_revealing_it(
    in_room: InRoom, alice: User, bob: User, carol: User, event: str, named_room: str, error: str
) -> None:
    (sender,) = await in_room("room-1", alice)
    target, neighbour = await in_room("room-2", bob, carol)
    room = "room-1" if named_room == "own" else "room-2"

    await sender.send(event, relay_data(event, room, target.socket_id))

    frame = await sender.expect_error(error, event=event)
    text = json.dumps(frame)
    for other in (target, neighbour):
        assert other.socket_id not in text
    await all_silent(sender, target, neighbour)


async def test_candidates_never_cross_into_another_room(in_room: InRoom, alice: User, bob: User, carol: User) -> None:
    sender, roommate = await in_room("room-1", alice, carol)
    (target,) = await in_room("room-2", bob)

    await sender.send("webrtc:ice-candidate", relay_data("webrtc:ice-candidate", "room-1", target.socket_id))
    await sender.send("webrtc:ice-candidate", relay_data("webrtc:ice-candidate", "room-1", None))

    assert (await roommate.expect("webrtc:ice-candidate"))["data"]["callRoomId"] == "room-1"
    await all_silent(sender, roommate, target)
