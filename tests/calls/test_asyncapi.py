"""Tests that ``GET /api/asyncapi.json`` serves the protocol as an AsyncAPI 3.0.0 document
generated from calls/protocol.py, complete for every event, error code and close code, and
that the frame check every test's client runs (tests/frame_schema.py) refuses frames that
break it."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from django.test import Client
from msgspec import Struct

from calls.asyncapi import (
    CHANNEL,
    CLIENT_TO_SERVER,
    SERVER_TO_CLIENT,
    IncompleteDescription,
    build_document,
    document_json,
)
from calls.protocol import (
    NATIVE,
    REQUEST_SCHEMAS,
    SERVER_EVENTS,
    CloseCode,
    ErrorCode,
    Event,
    LeaveReason,
    Media,
    Outgoing,
    ParticipantData,
    ParticipantLeft,
    RelayedOffer,
    RoomLeft,
    SessionDescription,
    SignalingError,
    error_event,
)
from tests.frame_schema import FrameSchemaError, check_frame, server_validators

URL = "/api/asyncapi.json"


@pytest.fixture
def client() -> Client:
    return Client()


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return json.loads(document_json())


def messages(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return document["channels"][CHANNEL]["messages"]


def event_of(message: dict[str, Any]) -> str:
    return message["payload"]["properties"]["event"]["const"]


def wire(event: Outgoing) -> dict[str, Any]:
    """The native frame the server would send for ``event``."""
    return json.loads(event.text(NATIVE))


def test_endpoint_serves_the_document_without_authentication(client: Client) -> None:
    """Tests that an anonymous GET answers 200 with the AsyncAPI 3.0.0 document of protocol 1.1."""
    response = client.get(URL)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["asyncapi"] == "3.0.0"
    assert body["info"]["version"] == "1.1"
    assert body["info"]["title"] and body["info"]["description"]
    assert body == json.loads(document_json())


def test_endpoint_refuses_other_methods(client: Client) -> None:
    """Tests that the document is read-only."""
    assert client.post(URL).status_code == 405


def test_document_is_built_once_per_process() -> None:
    """Tests that the served JSON is cached after its first build."""
    assert document_json() is document_json()


def test_servers_are_the_two_endpoints(document: dict[str, Any]) -> None:
    """Tests that the native websocket and the Socket.IO endpoint are the document's servers."""
    servers = document["servers"]
    assert servers["native"]["pathname"] == "/ws/calls/"
    assert servers["socketio"]["pathname"] == "/socket.io/"
    assert "Socket.IO" in servers["socketio"]["description"]
    assert "text frame" in servers["native"]["description"]


def test_every_event_has_a_message(document: dict[str, Any]) -> None:
    """Tests that each Event member has a message in the direction it travels, and that
    the relayed events have one in each direction."""
    by_direction: dict[str, set[str]] = {"client": set(), "server": set()}
    for key, message in messages(document).items():
        by_direction[key.split(".", 1)[0]].add(event_of(message))
    assert by_direction["client"] == {event.value for event in CLIENT_TO_SERVER} == set(REQUEST_SCHEMAS)
    assert by_direction["server"] == {event.value for event in SERVER_TO_CLIENT} == set(SERVER_EVENTS)
    assert by_direction["client"] | by_direction["server"] == {event.value for event in Event}
    assert {Event.OFFER, Event.ANSWER, Event.ICE_CANDIDATE} <= by_direction["client"] & by_direction["server"]


def test_operations_send_requests_and_receive_server_events(document: dict[str, Any]) -> None:
    """Tests that every client message has a send operation and every server message a
    receive operation, each pointing at its message in the channel."""
    actions = {
        operation["messages"][0]["$ref"].rsplit("/", 1)[1]: operation["action"]
        for operation in document["operations"].values()
    }
    assert actions == {key: "send" if key.startswith("client.") else "receive" for key in messages(document)}
    join = document["operations"]["send.join-room"]["reply"]["messages"]
    assert [ref["$ref"].rsplit("/", 1)[1] for ref in join] == ["server.room-joined", "server.signaling-error"]


def test_every_struct_is_a_component(document: dict[str, Any]) -> None:
    """Tests that every request and server event struct is in components.schemas and
    that each message's data refers to its own struct."""
    schemas = document["components"]["schemas"]
    for struct in [*REQUEST_SCHEMAS.values(), *SERVER_EVENTS.values()]:
        assert struct.__name__ in schemas
    for key, message in messages(document).items():
        event = Event(event_of(message))
        struct = REQUEST_SCHEMAS[event] if key.startswith("client.") else SERVER_EVENTS[event]
        ref = message["payload"]["properties"]["data"]["$ref"]
        assert ref.removeprefix("#/components/schemas/").removeprefix("Server") == struct.__name__


def test_server_schemas_forbid_undeclared_fields(document: dict[str, Any]) -> None:
    """Tests that server event envelopes and structs allow no other property, while the
    request schemas keep unknown keys allowed (they are ignored, docs/protocol.md §1)."""
    schemas = document["components"]["schemas"]
    for key, message in messages(document).items():
        strict = key.startswith("server.")
        assert message["payload"].get("additionalProperties", True) is not strict
        data = schemas[message["payload"]["properties"]["data"]["$ref"].rsplit("/", 1)[1]]
        assert data.get("additionalProperties", True) is not strict
    assert schemas["SessionDescription"].get("additionalProperties", True) is True
    assert schemas["ServerSessionDescription"]["additionalProperties"] is False
    assert schemas["RoomJoined"]["properties"]["metadata"] == {"type": "object"}


def test_only_replies_may_carry_an_id(document: dict[str, Any]) -> None:
    """Tests that the server frames that echo a request's id are exactly the replies."""
    with_id = {
        event_of(m)
        for k, m in messages(document).items()
        if k.startswith("server.") and "id" in m["payload"]["properties"]
    }
    assert with_id == {Event.ROOM_JOINED, Event.ROOM_LEFT, Event.RING_STARTED, Event.SIGNALING_ERROR, Event.ACK}


def test_patterns_are_ecma_regular_expressions(document: dict[str, Any]) -> None:
    """Tests that Python's end-of-string anchor is not left in the document's patterns."""
    room_id = document["components"]["schemas"]["JoinRoom"]["properties"]["callRoomId"]
    assert room_id["pattern"] == "^[A-Za-z0-9_.:\\-]+$"
    assert "\\Z" not in document_json().decode()


def test_error_and_close_codes_are_documented(document: dict[str, Any]) -> None:
    """Tests that every ErrorCode and every CloseCode is an enum value with its meaning."""
    schemas = document["components"]["schemas"]
    assert set(schemas["ErrorCode"]["enum"]) == set(ErrorCode)
    for error in ErrorCode:
        assert f"`{error.value}`" in schemas["ErrorCode"]["description"]
    codes = [CloseCode.GOING_AWAY, CloseCode.UNAUTHENTICATED, CloseCode.TOO_MANY_CONNECTIONS, CloseCode.FLOODING]
    assert schemas["CloseCode"]["enum"] == sorted(codes)
    for code in codes:
        assert f"- {code} " in schemas["CloseCode"]["description"]
    assert schemas["SignalingErrorData"]["properties"]["error"] == {"$ref": "#/components/schemas/ErrorCode"}


def test_a_server_event_without_a_struct_fails_the_build() -> None:
    """Tests that a server → client event missing from SERVER_EVENTS is an error, not a
    message silently left out."""
    without_ack: dict[Event, type[Struct]] = {
        event: struct for event, struct in SERVER_EVENTS.items() if event != Event.ACK
    }
    with pytest.raises(IncompleteDescription, match="server → client webrtc:ack has no struct"):
        build_document(server_events=without_ack)


def test_an_event_without_a_direction_fails_the_build() -> None:
    """Tests that an Event member listed in neither direction is an error."""
    with pytest.raises(IncompleteDescription, match=r"webrtc:connected \(Event.CONNECTED\) has no direction"):
        build_document(server_to_client=[event for event in SERVER_TO_CLIENT if event != Event.CONNECTED])


def test_a_request_without_a_schema_fails_the_build() -> None:
    """Tests that a client → server event missing from REQUEST_SCHEMAS is an error."""
    requests = {event: schema for event, schema in REQUEST_SCHEMAS.items() if event != Event.REFRESH_AUTH}
    with pytest.raises(IncompleteDescription, match="client → server webrtc:refresh-auth has no request schema"):
        build_document(requests=requests)


PARTICIPANT = ParticipantData(
    socketId="s1",
    userId="1",
    username="alice",
    displayName="Alice",
    joinedAt="2026-01-01T00:00:00.000Z",
    media=Media(audio=True, video=False),
)
PARTICIPANT_WIRE = msgspec.to_builtins(PARTICIPANT)


def test_frames_the_server_builds_pass() -> None:
    """Tests that frames framed by the server's own code pass the check."""
    check_frame(wire(Outgoing(Event.ROOM_LEFT, RoomLeft(callRoomId="r"), 7)))
    left = ParticipantLeft(callRoomId="r", participant=PARTICIPANT, reason=LeaveReason.LOST)
    check_frame(wire(Outgoing(Event.PARTICIPANT_LEFT, left)))
    offer = RelayedOffer(
        callRoomId="r", fromSocketId="s", fromUserId="1", offer=SessionDescription("offer", "v=0"), sdpMid=None
    )
    check_frame(wire(Outgoing(Event.OFFER, offer)))
    check_frame(
        wire(
            error_event(SignalingError(ErrorCode.ROOM_FULL, "Full.", details={"maxParticipants": 2}, request_id="c-1"))
        )
    )


@pytest.mark.parametrize(
    ("frame", "complaint"),
    [
        ({"event": "webrtc:room-left", "data": {"callRoomId": "r", "extra": 1}}, "'extra' was unexpected"),
        ({"event": "webrtc:room-left", "data": {"callRoomId": "r"}, "extra": 1}, "'extra' was unexpected"),
        ({"event": "webrtc:room-left", "data": {}}, "'callRoomId' is a required property"),
        ({"event": "webrtc:room-left"}, "'data' is a required property"),
        ({"event": "webrtc:ring-started", "data": {}}, "'ringId' is a required property"),
        ({"event": "webrtc:no-such-event", "data": {}}, "does not declare"),
        ({"data": {}}, "without a string event"),
        (
            {"event": "webrtc:participant-left", "data": {"callRoomId": "r", "participant": {}, "reason": "left"}},
            "'socketId' is a required property",
        ),
        (
            {"event": "webrtc:participant-left", "data": {"callRoomId": "r", "participant": PARTICIPANT_WIRE,
                                                          "reason": "banished"}},
            "'banished' is not one of",
        ),
        (
            {"event": "webrtc:offer", "data": {"callRoomId": "r", "fromSocketId": "s", "fromUserId": "1",
                                               "offer": {"type": "offer", "sdp": "v=0", "x": 1}}},
            "'x' was unexpected",
        ),
        (
            {"event": "webrtc:offer", "id": "c-1", "data": {"callRoomId": "r", "fromSocketId": "s", "fromUserId": "1",
                                                            "offer": {"type": "offer", "sdp": "v=0"}}},
            "'id' was unexpected",
        ),
    ],
)  # fmt: skip
def test_frames_that_break_their_schema_fail(frame: dict[str, Any], complaint: str) -> None:
    """Tests that an undeclared field, a missing one, an undeclared event or a relay that
    carries an id fails the check, with a message that names the problem and the frame."""
    with pytest.raises(FrameSchemaError) as raised:
        check_frame(frame)
    assert complaint in str(raised.value)
    assert repr(frame) in str(raised.value)


def test_validators_follow_the_document(document: dict[str, Any]) -> None:
    """Tests that the check uses one validator per server event of the document given."""
    validators = server_validators(document)
    assert set(validators) == {event.value for event in SERVER_TO_CLIENT}
    frame = wire(Outgoing(Event.ROOM_LEFT, RoomLeft(callRoomId="r")))
    check_frame(frame, validators)
    with pytest.raises(FrameSchemaError, match="does not declare"):
        check_frame(frame, {})
