"""Tests that malformed, unknown and oversized frames are answered as docs/protocol.md §1, §3 and §5 rule 6 say."""

from __future__ import annotations

import json
from typing import Any

import pytest

from accounts.models import User
from tests.calls.conftest import InRoom, all_silent, socket_ids
from tests.conftest import Client, ConnectFactory

pytestmark = pytest.mark.django_db(transaction=True)

JOIN, LEAVE, OFFER, ANSWER, CANDIDATE = (
    "webrtc:join-room",
    "webrtc:leave-room",
    "webrtc:offer",
    "webrtc:answer",
    "webrtc:ice-candidate",
)
TARGET = "<target socket id>"  # replaced by the other participant's socketId when sent
SDP = {"type": "offer", "sdp": "v=0\r\n"}


def join(room: Any = "elsewhere", **fields: Any) -> dict[str, Any]:
    """A join frame; if it were accepted, the sender would leave its room for another."""
    return {"event": JOIN, "data": {"callRoomId": room, **fields}}


def offer(**fields: Any) -> dict[str, Any]:
    return {"event": OFFER, "data": {"callRoomId": "r", "targetSocketId": TARGET, "offer": SDP, **fields}}


def candidate(**fields: Any) -> dict[str, Any]:
    return {"event": CANDIDATE, "data": {"callRoomId": "r", "targetSocketId": TARGET, "candidate": "", **fields}}


def without(frame: dict[str, Any], key: str) -> dict[str, Any]:
    frame["data"].pop(key)
    return frame


def rendered(frame: str | dict[str, Any], target: Client) -> str:
    text = frame if isinstance(frame, str) else json.dumps(frame)
    return text.replace(TARGET, target.socket_id)


MALFORMED_FRAMES = [
    pytest.param('{"event": "webrtc:join-room", "data": {', id="not JSON"),
    pytest.param("   ", id="blank frame"),
    pytest.param('[{"event": "webrtc:join-room", "data": {"callRoomId": "elsewhere"}}]', id="JSON array"),
    pytest.param('"webrtc:join-room"', id="JSON string"),
    pytest.param({"data": {"callRoomId": "elsewhere"}}, id="event missing"),
    pytest.param({"event": 7, "data": {"callRoomId": "elsewhere"}}, id="event not a string"),
    pytest.param({"event": JOIN}, id="data missing"),
    pytest.param({"event": JOIN, "data": ["elsewhere"]}, id="data an array"),
    pytest.param({"event": JOIN, "data": "elsewhere"}, id="data a string"),
    pytest.param({"event": JOIN, "data": None}, id="data null"),
    pytest.param({"event": JOIN, "data": {}}, id="callRoomId missing"),
    pytest.param(join(""), id="callRoomId empty"),
    pytest.param(join("x" * 129), id="callRoomId of 129 characters"),
    pytest.param(join("stand up"), id="callRoomId with a space"),
    pytest.param(join("team/standup"), id="callRoomId with a slash"),
    pytest.param(join("café"), id="callRoomId with a non-ASCII letter"),
    pytest.param(join(42), id="callRoomId a number"),
    pytest.param(join(callType="screen"), id="callType screen"),
    pytest.param(join(metadata=["topic"]), id="metadata an array"),
    pytest.param(join(metadata="topic"), id="metadata a string"),
    pytest.param(join(metadata={"blob": "x" * 4100}), id="metadata over 4 KiB"),
    pytest.param(join(metadata={"groupId": "abc"}), id="groupId not numeric"),
    pytest.param(join(metadata={"groupId": True}), id="groupId true"),
    pytest.param(join(metadata={"groupId": -1}), id="groupId negative"),
    pytest.param(join(metadata={"groupId": 1.5}), id="groupId fractional"),
    pytest.param(join(metadata={"groupId": [1]}), id="groupId an array"),
    pytest.param({"event": LEAVE, "data": {"callRoomId": "r/"}}, id="leave with a bad callRoomId"),
    pytest.param(offer(offer={"type": "offer"}), id="offer missing sdp"),
    pytest.param(offer(offer={"type": "pranswer", "sdp": "v=0\r\n"}), id="offer type pranswer"),
    pytest.param(offer(offer={"type": "offer", "sdp": 0}), id="sdp not a string"),
    pytest.param(offer(offer="v=0\r\n"), id="offer a string"),
    pytest.param(without(offer(), "offer"), id="offer missing"),
    pytest.param(without(offer(), "targetSocketId"), id="offer without targetSocketId"),
    pytest.param(offer(targetSocketId=5), id="targetSocketId a number"),
    pytest.param(offer(sdpMLineIndex=-1), id="sdpMLineIndex negative"),
    pytest.param(offer(sdpMLineIndex="0"), id="sdpMLineIndex a string"),
    pytest.param(offer(sdpMLineIndex=True), id="sdpMLineIndex true"),
    pytest.param(offer(sdpMLineIndex=0.5), id="sdpMLineIndex fractional"),
    pytest.param(offer(sdpMid=5), id="sdpMid a number"),
    pytest.param(
        {"event": ANSWER, "data": {"callRoomId": "r", "targetSocketId": TARGET, "answer": {"sdp": "v=0\r\n"}}},
        id="answer missing type",
    ),
    pytest.param(without(candidate(), "candidate"), id="candidate missing"),
    pytest.param(candidate(candidate=5), id="candidate a number"),
    pytest.param(candidate(candidate={"sdpMid": "0"}), id="candidate object without candidate"),
    pytest.param(candidate(candidate={"candidate": 5}), id="candidate object with a number"),
    pytest.param(candidate(sdpMid=5), id="candidate sdpMid a number"),
    pytest.param(candidate(sdpMLineIndex=-1), id="candidate sdpMLineIndex negative"),
    pytest.param(join("r\n"), id="callRoomId with a trailing newline"),
    pytest.param(join("group-1\nINFO forged log line"), id="callRoomId with a newline inside"),
    pytest.param(offer(sdpMLineIndex=65536), id="sdpMLineIndex over 65535"),
    pytest.param(offer(sdpMLineIndex=int("9" * 301)), id="sdpMLineIndex of 301 digits"),
    pytest.param(candidate(sdpMLineIndex=65536), id="candidate sdpMLineIndex over 65535"),
    pytest.param(candidate(candidate={"candidate": "", "sdpMLineIndex": 70000}), id="candidate init index over 65535"),
    pytest.param(offer(sdpMid="m" * 257), id="sdpMid of 257 characters"),
    pytest.param(candidate(sdpMid="m" * 257), id="candidate sdpMid of 257 characters"),
    pytest.param("[" * 65000, id="64 KiB of ["),
    pytest.param(
        '{"event": "webrtc:join-room", "data": {"callRoomId": "x", "metadata": ' + "[" * 40 + "]" * 40 + "}}",
        id="a frame nested 43 deep",
    ),
    pytest.param(
        join(metadata={"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}), id="metadata nested 9 deep"
    ),
    pytest.param(
        '{"event": "webrtc:join-room", "data": {"callRoomId": "x", "metadata": ' + '{"a":' * 970 + "1" + "}" * 972,
        id="metadata nested 970 deep",
    ),
    pytest.param({**join(), "id": "x" * 65}, id="id of 65 characters"),
    pytest.param({**join(), "id": ["c-1"]}, id="id a list"),
    pytest.param({**join(), "id": {"n": 1}}, id="id an object"),
    pytest.param({**join(), "id": 1.5}, id="id fractional"),
    pytest.param({**join(), "id": True}, id="id true"),
]


@pytest.mark.parametrize("frame", MALFORMED_FRAMES)
async def test_a_malformed_frame_gets_one_invalid_message_and_changes_nothing(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User, frame: str | dict[str, Any]
) -> None:
    sender, other = await in_room("r", alice, bob)

    await sender.send_raw(rendered(frame, other))

    error = await sender.expect_error("invalid-message")
    assert "id" not in error
    await all_silent(sender, other)
    joined = await (await connect(carol)).join("r")
    assert socket_ids(joined["existingParticipants"]) == [sender.socket_id, other.socket_id]
    await sender.expect("webrtc:participant-joined")
    assert (await sender.join("r"))["participantCount"] == 3  # the connection is still open


@pytest.mark.parametrize("size", [4096, 4097])
async def test_metadata_may_be_up_to_4_kib_serialized(connect: ConnectFactory, alice: User, size: int) -> None:
    metadata = {"note": ""}
    metadata["note"] = "x" * (size - len(json.dumps(metadata, separators=(",", ":"))))
    client = await connect(alice)

    await client.send(JOIN, {"callRoomId": "r", "metadata": metadata})

    if size <= 4096:
        assert (await client.expect("webrtc:room-joined"))["data"]["metadata"]["note"] == metadata["note"]
    else:
        await client.expect_error("invalid-message", event=JOIN)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(
            {"event": OFFER, "data": {"callRoomId": "nowhere", "targetSocketId": "nobody", "offer": {"type": "offer"}}},
            id="offer missing sdp",
        ),
        pytest.param(
            {"event": ANSWER, "data": {"callRoomId": "nowhere", "answer": {"type": "answer", "sdp": ""}}},
            id="answer without target",
        ),
        pytest.param({"event": CANDIDATE, "data": {"callRoomId": "nowhere", "candidate": 5}}, id="candidate a number"),
    ],
)
async def test_a_malformed_frame_naming_a_room_that_does_not_exist_is_invalid_message(
    connect: ConnectFactory, alice: User, frame: dict[str, Any]
) -> None:
    """Tests the order of §3: field rules are checked before room rules."""
    client = await connect(alice)

    await client.send_raw(json.dumps(frame))

    await client.expect_error("invalid-message", event=frame["event"])


# ---------------------------------------------------------------------------
# Unknown events and the order of checks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        "webrtc:bogus",
        "join-room",
        "WEBRTC:JOIN-ROOM",
        "webrtc:room-joined",
        "webrtc:connected",
        "webrtc:signaling-error",
    ],
)
async def test_an_unknown_event_is_answered_with_unknown_event(
    connect: ConnectFactory, alice: User, event: str
) -> None:
    client = await connect(alice)

    await client.send(event, {"callRoomId": "r"})

    await client.expect_error("unknown-event", event=event)
    await client.expect_silence()
    assert (await client.join("r"))["participantCount"] == 1


async def test_an_unknown_event_with_data_that_is_not_an_object_is_invalid_message(
    connect: ConnectFactory, alice: User
) -> None:
    """Tests the order of §3: an object ``data`` is checked before the event is looked up."""
    client = await connect(alice)

    await client.send("webrtc:bogus", ["r"])

    await client.expect_error("invalid-message")


async def test_the_frame_size_is_checked_before_the_json(settings: Any, connect: ConnectFactory, alice: User) -> None:
    settings.CALLS_MAX_MESSAGE_BYTES = 2048
    client = await connect(alice)

    await client.send_raw("{" * 3000)

    await client.expect_error("message-too-large")


# ---------------------------------------------------------------------------
# The client event and the request id in replies
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param({"event": LEAVE, "data": {"callRoomId": "r"}}, "not-in-room", id="room rule"),
        pytest.param({"event": OFFER, "data": {"callRoomId": "r"}}, "invalid-message", id="field rule"),
        pytest.param({"event": JOIN, "data": []}, "invalid-message", id="data not an object"),
        pytest.param({"event": JOIN}, "invalid-message", id="data missing"),
        pytest.param({**join(), "id": "x" * 65}, "invalid-message", id="id too long"),
        pytest.param({**join(), "id": ["c-1"]}, "invalid-message", id="id a list"),
        pytest.param({"event": "webrtc:bogus", "data": {}}, "unknown-event", id="unknown event"),
    ],
)
async def test_an_error_names_the_client_event_that_caused_it(
    connect: ConnectFactory, alice: User, frame: dict[str, Any], code: str
) -> None:
    client = await connect(alice)

    await client.send_raw(json.dumps(frame))

    await client.expect_error(code, event=frame["event"])


@pytest.mark.parametrize("request_id", ["c-17", 17, 0, "x" * 64], ids=["string", "integer", "zero", "64 characters"])
async def test_room_joined_and_room_left_echo_the_request_id(
    connect: ConnectFactory, alice: User, request_id: str | int
) -> None:
    client = await connect(alice)

    await client.send(JOIN, {"callRoomId": "r"}, id=request_id)
    assert (await client.expect("webrtc:room-joined"))["id"] == request_id
    await client.send(LEAVE, {"callRoomId": "r"}, id=request_id)
    assert (await client.expect("webrtc:room-left"))["id"] == request_id


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param({"event": LEAVE, "data": {"callRoomId": "r"}}, "not-in-room", id="room rule"),
        pytest.param(
            {"event": OFFER, "data": {"callRoomId": "r", "targetSocketId": "nobody", "offer": SDP}},
            "room-not-found",
            id="relay rule",
        ),
        pytest.param({"event": JOIN, "data": {"callRoomId": ""}}, "invalid-message", id="field rule"),
        pytest.param({"event": JOIN, "data": []}, "invalid-message", id="data not an object"),
        pytest.param({"event": JOIN}, "invalid-message", id="data missing"),
        pytest.param({"event": "webrtc:bogus", "data": {}}, "unknown-event", id="unknown event"),
    ],
)
@pytest.mark.parametrize("request_id", ["c-17", 17], ids=["string", "integer"])
async def test_a_signaling_error_echoes_the_request_id(
    connect: ConnectFactory, alice: User, frame: dict[str, Any], code: str, request_id: str | int
) -> None:
    client = await connect(alice)

    await client.send_raw(json.dumps({**frame, "id": request_id}))

    assert (await client.expect_error(code))["id"] == request_id


async def test_a_relayed_frame_never_carries_the_senders_request_id(in_room: InRoom, alice: User, bob: User) -> None:
    sender, target = await in_room("r", alice, bob)

    await sender.send(CANDIDATE, {"callRoomId": "r", "candidate": ""}, id="c-1")

    assert "id" not in await target.expect(CANDIDATE)
    assert (await sender.expect("webrtc:ack"))["id"] == "c-1"  # the one reply to a request with an id
    await sender.expect_silence()


# ---------------------------------------------------------------------------
# Frames rejected before parsing: binary and too large
# ---------------------------------------------------------------------------


async def test_a_binary_frame_is_invalid_message_and_not_applied(connect: ConnectFactory, alice: User) -> None:
    client = await connect(alice)
    valid_join = json.dumps({"event": JOIN, "data": {"callRoomId": "r"}, "id": "c-1"}).encode()

    await client.communicator.send_to(bytes_data=valid_join)

    error = await client.expect_error("invalid-message")
    assert "id" not in error
    await client.expect_silence()
    assert (await client.join("r"))["participantCount"] == 1  # not joined before, still open now


@pytest.mark.parametrize("filler", ["x" * 3000, "é" * 1500], ids=["ascii", "multi-byte within the limit in characters"])
async def test_a_frame_over_the_size_limit_is_message_too_large_and_not_relayed(
    settings: Any, in_room: InRoom, alice: User, bob: User, filler: str
) -> None:
    settings.CALLS_MAX_MESSAGE_BYTES = 2048
    sender, target = await in_room("r", alice, bob)
    frame = {
        "event": OFFER,
        "data": {"callRoomId": "r", "targetSocketId": target.socket_id, "offer": {"type": "offer", "sdp": filler}},
        "id": "big-1",
    }
    text = json.dumps(frame, ensure_ascii=False)
    assert len(text.encode()) > 2048

    await sender.send_raw(text)

    error = await sender.expect_error("message-too-large")
    assert "id" not in error
    await all_silent(sender, target)
    await sender.send(CANDIDATE, {"callRoomId": "r", "candidate": ""})
    await target.expect(CANDIDATE)  # still open, still in the room


async def test_a_frame_of_exactly_the_size_limit_is_relayed(
    settings: Any, in_room: InRoom, alice: User, bob: User
) -> None:
    settings.CALLS_MAX_MESSAGE_BYTES = 2048
    sender, target = await in_room("r", alice, bob)
    data = {"callRoomId": "r", "targetSocketId": target.socket_id, "offer": {"type": "offer", "sdp": ""}}
    padding = 2048 - len(json.dumps({"event": OFFER, "data": data}).encode())
    data["offer"]["sdp"] = "x" * padding

    await sender.send_raw(json.dumps({"event": OFFER, "data": data}))

    assert (await target.expect(OFFER))["data"]["offer"]["sdp"] == "x" * padding


async def test_metadata_may_nest_8_levels_deep(connect: ConnectFactory, alice: User) -> None:
    creator = await connect(alice)
    metadata = {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}

    joined = await creator.join("deep", metadata=metadata)

    assert joined["metadata"]["a"] == metadata["a"]


@pytest.mark.parametrize(("index", "mid"), [(0, "0"), (65535, "m" * 256), (None, None)])
async def test_sdp_bounds_are_inclusive(
    in_room: InRoom, alice: User, bob: User, index: int | None, mid: str | None
) -> None:
    sender, target = await in_room("r", alice, bob)

    await sender.send_raw(rendered(candidate(sdpMLineIndex=index, sdpMid=mid), target))

    relayed = (await target.expect("webrtc:ice-candidate"))["data"]
    assert (relayed["sdpMLineIndex"], relayed["sdpMid"]) == (index, mid)
