"""Tests, with generated frames, that hostile input never harms the server or anyone
else (issue: hardening). Run by the real ASGI application with several clients.

Properties, for every generated bad frame sent by a participant:
- it gets exactly one ``signaling-error`` with the code the contract predicts (or,
  for an ICE candidate to a participant not in the room, nothing);
- the connection stays open: nothing but a contract close code may end it;
- nobody else receives anything because of it;
- rooms and participant lists are unchanged;
- no warning or error reaches the log.

Profiles: ``ci`` (the default, 1,000 examples of up to 5 frames) and ``deep`` (5,000
examples): ``HYPOTHESIS_PROFILE=deep pytest tests/calls/test_hostile_input.py``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.models import User
from calls.presence import get_presence
from calls.protocol import REQUEST_SCHEMAS
from tests.calls.conftest import InRoom

pytestmark = pytest.mark.django_db(transaction=True)

settings.register_profile(
    "ci",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile("deep", parent=settings.get_profile("ci"), max_examples=5000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOM, OTHER_ROOM = "hostile", "elsewhere"
FRAMES_THROWN = [0]  # bad frames sent in this process, for the record
KNOWN_EVENTS = set(REQUEST_SCHEMAS)
FRAME_LIMIT = 65536

# --- building blocks ---------------------------------------------------------

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
not_a_string = json_values.filter(lambda v: not isinstance(v, str))
not_an_object = json_values.filter(lambda v: not isinstance(v, dict))
not_an_int = json_values.filter(lambda v: not isinstance(v, int) or isinstance(v, bool))
bad_room_ids = (
    st.just("")
    | st.text(min_size=129, max_size=200, alphabet="abc")
    | st.text(min_size=1, max_size=20).filter(lambda s: any(not (c.isascii() and (c.isalnum() or c in "_.:-"))
                                                             for c in s))
    | not_a_string
)  # fmt: skip
deep_nesting = st.integers(min_value=50, max_value=5000).map(
    lambda n: json.loads("[" * n + "]" * n) if n < 900 else None
)


class Expect:
    """What a frame must cause: an error code, or nothing."""

    def __init__(self, code: str | None) -> None:
        self.code = code

    def __repr__(self) -> str:
        return f"Expect({self.code})"


def frame(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, str | int) and len(str(value)) <= 64


# --- bad frames, each with the error the contract predicts -------------------


@st.composite
def not_json(draw: st.DrawFn) -> tuple[str, Expect]:
    text = draw(st.text(max_size=50) | st.sampled_from(["{", "[1,", "nul", '{"event":', "{'a': 1}", "\ud7ff"]))
    try:
        json.loads(text)
    except ValueError:
        return text, Expect("invalid-message")
    return frame([text]), Expect("invalid-message")  # it parsed: wrap it in a non-object


@st.composite
def arbitrary_json(draw: st.DrawFn) -> tuple[str, Expect]:
    """Any JSON value, classified by the envelope rules of docs/protocol.md §3."""
    value = draw(
        json_values | st.fixed_dictionaries({"event": json_values, "data": json_values}, optional={"id": json_values})
    )
    if not isinstance(value, dict):
        return frame(value), Expect("invalid-message")
    if "id" in value and not valid_id(value["id"]):
        return frame(value), Expect("invalid-message")
    if not isinstance(value.get("event"), str) or not isinstance(value.get("data"), dict):
        return frame(value), Expect("invalid-message")
    if value["event"] not in KNOWN_EVENTS:
        return frame(value), Expect("unknown-event")
    return frame({"event": value["event"], "data": {"callRoomId": 5}}), Expect("invalid-message")


@st.composite
def unknown_event(draw: st.DrawFn) -> tuple[str, Expect]:
    server_names = ["webrtc:connected", "webrtc:room-joined", "webrtc:signaling-error", "WEBRTC:OFFER", "webrtc:offer "]
    event = draw(st.text(max_size=80).filter(lambda e: e not in KNOWN_EVENTS) | st.sampled_from(server_names))
    data = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
    return frame({"event": event, "data": data, "id": draw(st.text(max_size=64) | st.integers())}), Expect(
        "unknown-event"
    )


def valid_data(event: str, me: str, target: str) -> dict[str, Any]:
    description = {"type": "offer" if event == "webrtc:offer" else "answer", "sdp": "v=0\r\n"}
    return {
        "webrtc:join-room": {"callRoomId": ROOM, "callType": "audio", "metadata": {"topic": "x"}},
        "webrtc:leave-room": {"callRoomId": ROOM},
        "webrtc:offer": {"callRoomId": ROOM, "targetSocketId": target, "offer": description, "sdpMid": "0"},
        "webrtc:answer": {"callRoomId": ROOM, "targetSocketId": target, "answer": description},
        "webrtc:ice-candidate": {
            "callRoomId": ROOM,
            "targetSocketId": target,
            "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"},
            "sdpMLineIndex": 0,
        },
    }[event]


# For each event: field → strategy of values that break it.
BROKEN_FIELDS: dict[str, dict[str, st.SearchStrategy]] = {
    "webrtc:join-room": {
        "callRoomId": bad_room_ids,
        "callType": st.text(max_size=10).filter(lambda t: t not in ("audio", "video"))
        | not_a_string.filter(lambda v: v is not None),
        "metadata": not_an_object.filter(lambda v: v is not None)
        | st.builds(lambda n: {"blob": "x" * n}, st.integers(4090, 30000))
        | st.builds(lambda g: {"groupId": g}, st.sampled_from(["abc", "-1", "1.5", "", " 1", True, 1.5, -3, 0, [1]])),
    },
    "webrtc:leave-room": {"callRoomId": bad_room_ids},
    "webrtc:offer": {
        "callRoomId": bad_room_ids,
        "targetSocketId": not_a_string | st.just(""),
        "offer": not_an_object
        | st.fixed_dictionaries({"type": st.sampled_from(["pranswer", "rollback", "", 1])},
                                optional={"sdp": st.text(max_size=5)})
        | st.fixed_dictionaries({"type": st.just("offer"), "sdp": not_a_string}) | deep_nesting,
        "sdpMid": json_values.filter(lambda v: v is not None and not isinstance(v, str)),
        "sdpMLineIndex": st.integers(max_value=-1) | st.booleans() | st.text(max_size=3)
        | st.floats(allow_nan=False, allow_infinity=False),
    },
    "webrtc:answer": {
        "callRoomId": bad_room_ids,
        "targetSocketId": not_a_string | st.just(""),
        "answer": not_an_object | st.fixed_dictionaries({"sdp": st.text(max_size=5)}),
    },
    "webrtc:ice-candidate": {
        "callRoomId": bad_room_ids,
        "candidate": not_an_object.filter(lambda v: not isinstance(v, str))
        | st.fixed_dictionaries({}, optional={"sdpMid": st.text(max_size=3)})
        | st.fixed_dictionaries({"candidate": not_a_string}),
        "targetSocketId": not_a_string.filter(lambda v: v is not None) | st.just(""),
        "sdpMLineIndex": st.integers(max_value=-1) | st.booleans() | st.text(max_size=3),
    },
}  # fmt: skip


@st.composite
def one_field_broken(draw: st.DrawFn, me: str, target: str) -> tuple[str, Expect]:
    event = draw(st.sampled_from(sorted(BROKEN_FIELDS)))
    field = draw(st.sampled_from(sorted(BROKEN_FIELDS[event])))
    data = valid_data(event, me, target)
    data[field] = draw(BROKEN_FIELDS[event][field])
    if data[field] is None:  # null means "absent" for these optional fields: break it otherwise
        data[field] = [None]
    required = field in ("callRoomId", "offer", "answer", "candidate") or (
        field == "targetSocketId" and event != "webrtc:ice-candidate"
    )
    if required and draw(st.booleans()):
        data.pop(field)  # a missing required field is as broken as a wrong one
    text = frame({"event": event, "data": data, "id": draw(st.text(max_size=64) | st.integers())})
    return text, Expect("message-too-large" if len(text.encode()) > FRAME_LIMIT else "invalid-message")


@st.composite
def wrong_room_or_target(draw: st.DrawFn, me: str, target: str, outsider: str) -> tuple[str, Expect]:
    """Valid events aimed where the sender is not, or at someone not in its room."""
    event = draw(st.sampled_from(["webrtc:leave-room", "webrtc:offer", "webrtc:answer", "webrtc:ice-candidate"]))
    data = valid_data(event, me, target)
    case = draw(st.sampled_from(["other-room", "no-room", "outsider", "nobody"]))
    if case == "other-room":
        data["callRoomId"], expected = OTHER_ROOM, "not-in-room"
    elif case == "no-room":
        data["callRoomId"] = draw(st.text(min_size=1, max_size=20, alphabet="xyz019_.:-"))
        expected = "not-in-room" if event == "webrtc:leave-room" else "room-not-found"
    elif event == "webrtc:leave-room":
        data["callRoomId"], expected = OTHER_ROOM, "not-in-room"
    else:
        data["targetSocketId"] = outsider if case == "outsider" else draw(st.text(min_size=1, max_size=30))
        expected = None if event == "webrtc:ice-candidate" else "participant-not-found"
    return frame({"event": event, "data": data}), Expect(expected)


@st.composite
def oversized(draw: st.DrawFn) -> tuple[str, Expect]:
    size = draw(st.integers(FRAME_LIMIT + 1, FRAME_LIMIT * 3))
    return frame({"event": "webrtc:offer", "data": {"callRoomId": ROOM, "pad": "é" * (size // 2)}}), Expect(
        "message-too-large"
    )


def bad_frames(me: str, target: str, outsider: str) -> st.SearchStrategy[tuple[str, Expect]]:
    field_rules = one_field_broken(me, target)
    return st.one_of(  # the field rules are the largest space: drawn three times as often
        not_json(),
        arbitrary_json(),
        unknown_event(),
        field_rules,
        field_rules,
        field_rules,
        wrong_room_or_target(me, target, outsider),
        oversized(),
    )


# --- the property --------------------------------------------------------------


class LogAlarm(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def log_alarm() -> Iterator[LogAlarm]:
    alarm = LogAlarm()
    logging.getLogger().addHandler(alarm)
    try:
        yield alarm
    finally:
        logging.getLogger().removeHandler(alarm)


@pytest.fixture
def unlimited(settings: Any) -> None:
    # Rate limits have their own tests; here every generated frame must be judged.
    settings.CALLS_RATE_LIMIT = 1_000_000
    settings.CALLS_RATE_BURST = 1_000_000


@given(data=st.data())
async def test_bad_frames_change_nothing_and_reach_nobody(
    data: st.DataObject, in_room: InRoom, unlimited: None, log_alarm: LogAlarm, alice: User, bob: User, carol: User
) -> None:
    a, b = await in_room(ROOM, alice, bob)
    (c,) = await in_room(OTHER_ROOM, carol)
    presence = get_presence()
    try:
        sender, observer = (a, b) if data.draw(st.booleans(), label="alice sends") else (b, a)
        frames = data.draw(
            st.lists(bad_frames(sender.socket_id, observer.socket_id, c.socket_id), min_size=1, max_size=5)
        )
        for i, (text, expect) in enumerate(frames):
            FRAMES_THROWN[0] += 1
            await sender.send_raw(text)
            if expect.code is not None:
                error = await sender.expect("webrtc:signaling-error")
                assert error["data"]["error"] == expect.code, (text[:300], error)
            # Sentinels, in order behind the frame: to itself, to the others.
            for target in (sender, observer):
                await sender.send("webrtc:ice-candidate", {"callRoomId": ROOM, "targetSocketId": target.socket_id,
                                                           "candidate": f"sentinel-{i}"})  # fmt: skip
                arrived = await target.expect("webrtc:ice-candidate")
                assert arrived["data"]["candidate"] == f"sentinel-{i}", "something arrived before the sentinel"
        await c.send(
            "webrtc:ice-candidate", {"callRoomId": OTHER_ROOM, "targetSocketId": c.socket_id, "candidate": "end"}
        )
        assert (await c.expect("webrtc:ice-candidate"))["data"]["candidate"] == "end"
        assert [m.participant.socket_id for m in await presence.members(room_key=ROOM)] == [a.socket_id, b.socket_id]
        assert [m.participant.socket_id for m in await presence.members(room_key=OTHER_ROOM)] == [c.socket_id]
        assert [r.getMessage() for r in log_alarm.records] == []
    finally:
        for client in (a, b, c):
            await client.close()
