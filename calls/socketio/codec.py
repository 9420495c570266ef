"""Engine.IO v4 and Socket.IO v5 packet framing, written here.

Not python-engineio's or python-socketio's packet classes: they decode a packet's whole
JSON payload into Python objects with the ``json`` module and encode replies the same
way, where this server validates a request's data straight from its raw JSON with the
msgspec schemas of ``calls.protocol`` (as the native endpoint does) and frames a server
event around the data the rules encoded once (``Outgoing.encoded_data``), never again
per transport or per recipient. The framing itself is a few lines; those packages would
add three dependencies (and their servers, which this project does not use) for it.

Engine.IO packets are text: a type digit, then data. Over long-polling several travel in
one HTTP body, separated by ``\\x1e``. A Socket.IO packet is the data of an Engine.IO
message (``4``): a type digit, for binary packets the number of attachments and ``-``, a
namespace and ``,`` unless it is ``/``, an acknowledgement id (digits), then JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import msgspec
from msgspec import Raw

from calls.protocol import (
    MAX_FRAME_DEPTH,
    TOO_DEEP,
    ErrorCode,
    Outgoing,
    ParsedRequest,
    SignalingError,
    nests_deeper_than,
    parse_request,
)

# Engine.IO packet types (the first character of every packet).
OPEN, CLOSE, PING, PONG, MESSAGE, UPGRADE, NOOP = "0", "1", "2", "3", "4", "5", "6"
BINARY_MESSAGE = "b"  # a binary message over long-polling: "b" and base64
PROBE = "probe"  # the data of the ping and pong that test a websocket before the upgrade
SEPARATOR = "\x1e"  # between the packets of one long-polling body
MAX_ACK_ID_DIGITS = 15  # acknowledgement ids are JavaScript numbers: exact below 2**53

MAIN_NAMESPACE = "/"
DISCONNECT_PACKET = MESSAGE + "1"  # Socket.IO DISCONNECT of "/", from either side


class PacketType(IntEnum):
    """Socket.IO packet types."""

    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


class PacketError(ValueError):
    """An Engine.IO message whose Socket.IO packet header cannot be read."""


@dataclass(frozen=True, slots=True)
class Packet:
    """A Socket.IO packet from a client; its JSON payload is left as text."""

    type: PacketType
    namespace: str
    ack_id: int | None
    payload: str
    attachments: int = 0


def decode_packet(message: str) -> Packet:
    """Read the header of the Socket.IO packet that an Engine.IO message carries (the
    message's data, without its leading ``4``); raise ``PacketError`` if it has none."""
    if not message or message[0] not in "0123456":
        raise PacketError("a Socket.IO packet starts with a type digit 0-6")
    kind = PacketType(int(message[0]))
    position = 1
    attachments = 0
    if kind in (PacketType.BINARY_EVENT, PacketType.BINARY_ACK):
        dash = message.find("-", position)
        count = message[position:dash]
        if dash < 0 or not count.isdigit() or not count.isascii() or len(count) > 3:
            raise PacketError("a binary Socket.IO packet gives its number of attachments, then '-'")
        attachments = int(count)
        position = dash + 1
    namespace = MAIN_NAMESPACE
    if message.startswith("/", position):
        comma = message.find(",", position)
        end = len(message) if comma < 0 else comma
        namespace = message[position:end]
        position = end + 1
    start = position
    while position < len(message) and "0" <= message[position] <= "9":
        position += 1
    if position - start > MAX_ACK_ID_DIGITS:
        raise PacketError(f"an acknowledgement id has at most {MAX_ACK_ID_DIGITS} digits")
    ack_id = int(message[start:position]) if position > start else None
    return Packet(kind, namespace, ack_id, message[position:], attachments)


_arguments_decoder = msgspec.json.Decoder(list[Raw])
_event_name_decoder = msgspec.json.Decoder(str)
_encoder = msgspec.json.Encoder()

BAD_EVENT = 'An event packet must be a JSON array of an event name and one data object: 42["event",{…}].'
BINARY_REFUSED = "Binary attachments are not accepted."
OTHER_NAMESPACE = 'This server serves the main namespace "/" only.'
ONLY_EVENTS = "A client may send this server CONNECT, DISCONNECT and EVENT packets only."
NOT_SOCKET_IO = "Not a Socket.IO packet: {reason}."


def parse_event(packet: Packet) -> ParsedRequest:
    """Validate a Socket.IO EVENT of a connected client as a request; its acknowledgement
    id is the request's id, so that the reply goes back as the acknowledgement."""
    ack_id = packet.ack_id
    if packet.namespace != MAIN_NAMESPACE:
        raise SignalingError(ErrorCode.INVALID_MESSAGE, OTHER_NAMESPACE, request_id=ack_id)
    if packet.type in (PacketType.BINARY_EVENT, PacketType.BINARY_ACK):
        raise SignalingError(ErrorCode.INVALID_MESSAGE, BINARY_REFUSED, request_id=ack_id)
    if packet.type is not PacketType.EVENT:
        # The server never asks for acknowledgements, so an ACK answers nothing.
        raise SignalingError(ErrorCode.INVALID_MESSAGE, ONLY_EVENTS)
    payload = packet.payload
    if nests_deeper_than(payload, MAX_FRAME_DEPTH):
        raise SignalingError(
            ErrorCode.INVALID_MESSAGE, TOO_DEEP, details={"maxDepth": MAX_FRAME_DEPTH}, request_id=ack_id
        )
    try:
        arguments = _arguments_decoder.decode(payload)
        event = _event_name_decoder.decode(arguments[0]) if arguments else None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SignalingError(
            ErrorCode.INVALID_MESSAGE, BAD_EVENT, details={"reason": str(exc)}, request_id=ack_id
        ) from None
    if event is None:
        raise SignalingError(ErrorCode.INVALID_MESSAGE, BAD_EVENT, request_id=ack_id)
    # Arguments after the data are ignored, like unknown keys (docs/protocol.md §1).
    data = bytes(arguments[1]) if len(arguments) > 1 else None
    if data is None or not data.startswith(b"{"):
        raise SignalingError(ErrorCode.INVALID_MESSAGE, BAD_EVENT, event=event, request_id=ack_id)
    return parse_request(event, data, ack_id)


def unreadable(reason: str) -> ParsedRequest:
    """The "parser" of an Engine.IO packet that carries no readable Socket.IO packet."""
    raise SignalingError(ErrorCode.INVALID_MESSAGE, NOT_SOCKET_IO.format(reason=reason), details={"reason": reason})


def open_packet(sid: str, *, upgrades: list[str], ping_interval_ms: int, ping_timeout_ms: int, max_payload: int) -> str:
    """The Engine.IO handshake."""
    handshake = {
        "sid": sid,
        "upgrades": upgrades,
        "pingInterval": ping_interval_ms,
        "pingTimeout": ping_timeout_ms,
        "maxPayload": max_payload,
    }
    return OPEN + _encoder.encode(handshake).decode()


def connect_packet(socket_id: str, pid: str) -> str:
    """Socket.IO CONNECT of "/", the server's answer: the client's ``socket.id``, and the
    private id it recovers its connection with (docs/protocol.md §6)."""
    return MESSAGE + "0" + _encoder.encode({"sid": socket_id, "pid": pid}).decode()


def connect_error_packet(message: str, namespace: str = MAIN_NAMESPACE) -> str:
    """Socket.IO CONNECT_ERROR: the client's ``connect_error`` with this message."""
    prefix = "" if namespace == MAIN_NAMESPACE else namespace + ","
    return MESSAGE + "4" + prefix + _encoder.encode({"message": message}).decode()


class SocketIOWire:
    """Server events as Socket.IO packets on "/": ``42["event",data]``, or, for the reply
    to a request that carried an acknowledgement id, ``43<id>[{"event","data"}]`` (the
    native reply without its ``id``). Built around the event's encoded data, without
    decoding it; ``Outgoing`` keeps the text for every Socket.IO recipient of the event."""

    name = "socketio"

    def frame(self, event: Outgoing) -> str:
        name = _encoder.encode(event.event)
        if event.request_id is None:
            return (b"42[" + name + b"," + event.encoded_data() + b"]").decode()
        ack_id = str(event.request_id).encode()
        return (b"43" + ack_id + b'[{"event":' + name + b',"data":' + event.encoded_data() + b"}]").decode()

    @staticmethod
    def with_offset(packet: str, offset: str) -> str:
        """An event packet with an offset as its last argument, as Socket.IO's connection
        state recovery sends them: ``42["event",data,"17"]``."""
        return f'{packet[:-1]},"{offset}"]'


SOCKETIO = SocketIOWire()
