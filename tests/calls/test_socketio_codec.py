"""Tests that the Socket.IO framing (calls/socketio/codec.py) reads client packets as
socket.io-parser writes them and frames server events without re-encoding their data."""

from __future__ import annotations

import json

import pytest

from calls.protocol import NATIVE, ErrorCode, Event, Outgoing, RoomLeft, SignalingError
from calls.socketio.codec import (
    SOCKETIO,
    Packet,
    PacketError,
    PacketType,
    connect_error_packet,
    decode_packet,
    parse_event,
)


@pytest.mark.parametrize(
    ("message", "packet"),
    [
        ("0", Packet(PacketType.CONNECT, "/", None, "")),
        ('0{"token":"t"}', Packet(PacketType.CONNECT, "/", None, '{"token":"t"}')),
        ("0/admin,", Packet(PacketType.CONNECT, "/admin", None, "")),
        ("1", Packet(PacketType.DISCONNECT, "/", None, "")),
        ('2["a",{}]', Packet(PacketType.EVENT, "/", None, '["a",{}]')),
        ('217["a",{}]', Packet(PacketType.EVENT, "/", 17, '["a",{}]')),
        ('2/chat,3["a"]', Packet(PacketType.EVENT, "/chat", 3, '["a"]')),
        ('51-["a",{"num":0}]', Packet(PacketType.BINARY_EVENT, "/", None, '["a",{"num":0}]', 1)),
    ],
)
def test_client_packets_are_read_as_socket_io_parser_writes_them(message: str, packet: Packet) -> None:
    assert decode_packet(message) == packet


@pytest.mark.parametrize("message", ["", "7", "x2[]", "5[]", "5x-[]", "2" + "1" * 16 + "[]", "٣[]"])
def test_unreadable_headers_are_refused(message: str) -> None:
    with pytest.raises(PacketError):
        decode_packet(message)


def test_an_event_is_a_request_whose_id_is_its_ack_id() -> None:
    parsed = parse_event(decode_packet('25["webrtc:leave-room",{"callRoomId":"r"},"ignored"]'))
    assert (parsed.event, parsed.request_id, parsed.request.callRoomId) == (Event.LEAVE_ROOM, 5, "r")


@pytest.mark.parametrize(
    "message",
    ["2[]", "2{}", '2["webrtc:leave-room"]', '2["webrtc:leave-room",[]]', "2[1,{}]", "2[", '2/x,["a",{}]', "3[]"],
)
def test_malformed_events_are_invalid_message(message: str) -> None:
    with pytest.raises(SignalingError) as refused:
        parse_event(decode_packet(message))
    assert refused.value.code is ErrorCode.INVALID_MESSAGE


def test_an_event_is_framed_once_for_every_socket_io_recipient() -> None:
    event = Outgoing(Event.ROOM_LEFT, RoomLeft(callRoomId="r"))
    text = event.text(SOCKETIO)
    assert text == '42["webrtc:room-left",{"callRoomId":"r"}]'
    assert event.text(SOCKETIO) is text  # cached on the event
    assert json.loads(event.text(NATIVE)) == {"event": "webrtc:room-left", "data": {"callRoomId": "r"}}


def test_an_event_from_another_process_is_framed_around_its_encoded_data() -> None:
    event = Outgoing("webrtc:offer", None, encoded=b'{"sdp":"v=0"}')
    assert event.text(SOCKETIO) == '42["webrtc:offer",{"sdp":"v=0"}]'


def test_a_reply_to_an_acknowledged_request_is_its_acknowledgement() -> None:
    reply = Outgoing(Event.ROOM_LEFT, RoomLeft(callRoomId="r"), request_id=12)
    assert reply.text(SOCKETIO) == '4312[{"event":"webrtc:room-left","data":{"callRoomId":"r"}}]'


def test_connect_errors_name_their_namespace() -> None:
    assert connect_error_packet("unauthenticated") == '44{"message":"unauthenticated"}'
    assert connect_error_packet("invalid-namespace", "/other") == '44/other,{"message":"invalid-namespace"}'
