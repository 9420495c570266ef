"""The protocol's machine-readable description: an AsyncAPI 3.0.0 document generated from
the schemas of ``calls.protocol`` (docs/protocol.md §1 to §4, §5 rule 6, §8).

Client requests are described by ``REQUEST_SCHEMAS`` and server events by
``SERVER_EVENTS``, through ``msgspec.json.schema_components``, so the document cannot
drift from what the server parses and sends. Each event's direction is listed here
explicitly: an ``Event`` member that is in neither list, or a listed event without a
schema, makes the build fail rather than leave the event out of the document.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from typing import Any

import msgspec
from msgspec import Struct

from calls.protocol import (
    MAX_REQUEST_ID_CHARS,
    REQUEST_SCHEMAS,
    SERVER_EVENTS,
    CloseCode,
    ErrorCode,
    Event,
)

ASYNCAPI_VERSION = "3.0.0"
PROTOCOL_VERSION = "1.1"
CHANNEL = "calls"
SCHEMAS = "#/components/schemas/"

# The direction of every Event member. offer, answer and ice-candidate go both ways:
# sent by a client, relayed by the server under the same name with other data.
CLIENT_TO_SERVER: tuple[Event, ...] = (
    Event.JOIN_ROOM,
    Event.LEAVE_ROOM,
    Event.OFFER,
    Event.ANSWER,
    Event.ICE_CANDIDATE,
    Event.REFRESH_AUTH,
    Event.MEDIA_STATE,
    Event.RING,
    Event.RING_REPLY,
    Event.RING_CANCEL,
    Event.KICK,
    Event.END_CALL,
    Event.LOCK_ROOM,
)
SERVER_TO_CLIENT: tuple[Event, ...] = (
    Event.CONNECTED,
    Event.RESUMED,
    Event.ROOM_JOINED,
    Event.ROOM_LEFT,
    Event.PARTICIPANT_JOINED,
    Event.PARTICIPANT_LEFT,
    Event.OFFER,
    Event.ANSWER,
    Event.ICE_CANDIDATE,
    Event.SIGNALING_ERROR,
    Event.ACK,
    Event.PARTICIPANT_UPDATED,
    Event.ROOM_UPDATED,
    Event.KICKED,
    Event.CALL_ENDED,
    Event.RING_STARTED,
    Event.INCOMING_CALL,
    Event.RING_UPDATED,
    Event.RING_ENDED,
)
# The replies to a request (docs/protocol.md §1): sent with the request's ``id``, the only
# server events whose frame may carry one. ``signaling-error`` is also sent without an id.
REPLIES: dict[Event, tuple[Event, ...]] = {
    Event.JOIN_ROOM: (Event.ROOM_JOINED, Event.SIGNALING_ERROR),
    Event.LEAVE_ROOM: (Event.ROOM_LEFT, Event.SIGNALING_ERROR),
    Event.OFFER: (Event.ACK, Event.SIGNALING_ERROR),
    Event.ANSWER: (Event.ACK, Event.SIGNALING_ERROR),
    Event.ICE_CANDIDATE: (Event.ACK, Event.SIGNALING_ERROR),
    Event.REFRESH_AUTH: (Event.ACK, Event.SIGNALING_ERROR),
    Event.MEDIA_STATE: (Event.ACK, Event.SIGNALING_ERROR),
    Event.RING: (Event.RING_STARTED, Event.SIGNALING_ERROR),
    Event.RING_REPLY: (Event.ACK, Event.SIGNALING_ERROR),
    Event.RING_CANCEL: (Event.ACK, Event.SIGNALING_ERROR),
    Event.KICK: (Event.ACK, Event.SIGNALING_ERROR),
    Event.END_CALL: (Event.ACK, Event.SIGNALING_ERROR),
    Event.LOCK_ROOM: (Event.ACK, Event.SIGNALING_ERROR),
}

SUMMARIES: dict[tuple[str, Event], str] = {
    ("client", Event.JOIN_ROOM): "Join a room, creating it if it has no live participants (leaves the current one).",
    ("client", Event.LEAVE_ROOM): "Leave the sender's room.",
    ("client", Event.OFFER): "An SDP offer for one participant of the sender's room.",
    ("client", Event.ANSWER): "An SDP answer for one participant of the sender's room.",
    ("client", Event.ICE_CANDIDATE): "An ICE candidate for one participant, or for everyone else without a target.",
    ("client", Event.REFRESH_AUTH): "A fresh access token of the same user, extending the connection's authentication.",
    ("client", Event.MEDIA_STATE): "The sender's media (audio, video, screen), told to the others.",
    ("client", Event.RING): "Ring the group's members who are not in the call, or some of them.",
    ("client", Event.RING_REPLY): "A callee accepts or declines its ring (on any of its connections).",
    ("client", Event.RING_CANCEL): "The ringer takes its ring back.",
    ("client", Event.KICK): "A moderator removes a participant, optionally banning its user for a while.",
    ("client", Event.END_CALL): "A moderator ends the call for everyone.",
    ("client", Event.LOCK_ROOM): "A moderator locks or unlocks the room.",
    ("server", Event.PARTICIPANT_UPDATED): "To everyone else in the room: a participant's media changed.",
    ("server", Event.ROOM_UPDATED): "To everyone in the room: it was locked or unlocked, and by whom.",
    ("server", Event.KICKED): "To a kicked participant: by whom, and the end of its ban if any.",
    ("server", Event.CALL_ENDED): "To everyone who was in the room: a moderator ended the call.",
    ("server", Event.RING_STARTED): "To the ringer: the ring and the users actually rung.",
    ("server", Event.INCOMING_CALL): "To every connection of a rung user (also one opened while it rings).",
    ("server", Event.RING_UPDATED): "To everyone in the room: how a callee's ring ended.",
    ("server", Event.RING_ENDED): "To every connection of a callee: its ring ended, and why.",
    ("server", Event.CONNECTED): "To the new connection, right after a successful connect.",
    ("server", Event.RESUMED): "After webrtc:connected, to a connection that resumed: then the missed messages.",
    ("server", Event.ROOM_JOINED): "To the joiner: the room, its participants and the ICE servers.",
    ("server", Event.ROOM_LEFT): "To the leaver.",
    ("server", Event.PARTICIPANT_JOINED): "To everyone else in the room.",
    ("server", Event.PARTICIPANT_LEFT): "To everyone else in the room, with the reason.",
    ("server", Event.OFFER): "A relayed offer, to its target; fromSocketId and fromUserId are the sender's.",
    ("server", Event.ANSWER): "A relayed answer, to its target; fromSocketId and fromUserId are the sender's.",
    ("server", Event.ICE_CANDIDATE): "A relayed candidate, to its target or to everyone else when it had none.",
    ("server", Event.SIGNALING_ERROR): "To the sender of a refused request; it changes nothing.",
    ("server", Event.ACK): "To the sender of a request with an id that has no reply of its own.",
}

# docs/protocol.md §5 rule 6.
ERROR_MEANINGS: dict[ErrorCode, str] = {
    ErrorCode.INVALID_MESSAGE: "the frame breaks the framing or the field rules (details.reason says what and where)",
    ErrorCode.UNKNOWN_EVENT: "the event is not a client → server event",
    ErrorCode.ROOM_NOT_FOUND: "the room has no live session",
    ErrorCode.NOT_IN_ROOM: "the sender is not in that room",
    ErrorCode.PARTICIPANT_NOT_FOUND: "the target of an offer or answer is not in the room",
    ErrorCode.FORBIDDEN: "not allowed (group, ban, moderation, another user's token)",
    ErrorCode.ROOM_FULL: "the room is full (details.maxParticipants)",
    ErrorCode.ROOM_LOCKED: "the room is locked and the sender is not one of its moderators",
    ErrorCode.RING_NOT_FOUND: "the ring is unknown, over, or not the sender's",
    ErrorCode.MESSAGE_TOO_LARGE: "the frame is over the size limit (details.maxBytes)",
    ErrorCode.RATE_LIMITED: "too many frames or joins",
    ErrorCode.RESUME_FAILED: "the resume token was refused",
    ErrorCode.INTERNAL_ERROR: "the server failed, or its shared state is unreachable for a moment; try again",
}

# docs/protocol.md §8.
CLOSE_MEANINGS: dict[int, str] = {
    CloseCode.GOING_AWAY: "server going away (shutdown, or a process its peers declared dead): reconnect",
    CloseCode.UNAUTHENTICATED: "not authenticated: do not reconnect without a new credential",
    CloseCode.TOO_MANY_CONNECTIONS: "too many connections for this user",
    CloseCode.FLOODING: "closed for flooding, or too many failed authentications from the client's address",
}

NATIVE_FRAMING = (
    'One JSON object per text frame: `{"event": NAME, "data": {…}, "id"?: …}`. `id` (a string, or an integer '
    f"of at most {MAX_REQUEST_ID_CHARS} characters) lets a client match the reply to its request: the reply "
    "carries it. Unknown keys, in the frame or in `data`, are ignored and never relayed. "
    "Use `wss://` behind TLS."
)
SOCKET_IO_FRAMING = (
    "Engine.IO v4 / Socket.IO v5 on the main namespace `/` (an unchanged `socket.io-client` 4.x). "
    "`socket.id` is the socketId. A protocol event is a Socket.IO event of the same name whose one argument "
    'is the event\'s `data` (`42["webrtc:offer",{…}]`), not the native envelope. A client event emitted with '
    "an acknowledgement gets its reply (the `{event, data}` object the native endpoint would send with the "
    "request's id) as the acknowledgement's one argument. The credential goes in the connect packet's auth "
    'object (`{"token": ACCESS}`); a refused one is a `connect_error` with the message `unauthenticated`. '
    "Long-polling needs sticky sessions across processes; binary attachments and other namespaces are refused."
)


class IncompleteDescription(Exception):
    """The protocol module and the lists of this module disagree: an event would be
    missing from the document, or described without a schema."""


def close_codes() -> dict[str, int]:
    """``CloseCode``'s members, by name."""
    return {name: value for name, value in vars(CloseCode).items() if name.isupper() and isinstance(value, int)}


def check_complete(
    requests: Mapping[str, type[Struct]] = REQUEST_SCHEMAS,
    server_events: Mapping[Event, type[Struct]] = SERVER_EVENTS,
    client_to_server: Iterable[Event] = CLIENT_TO_SERVER,
    server_to_client: Iterable[Event] = SERVER_TO_CLIENT,
) -> None:
    """Raise ``IncompleteDescription`` unless every event, error code and close code can
    be described."""
    sent, received = list(client_to_server), list(server_to_client)
    problems = [
        f"{event.value} (Event.{event.name}) has no direction" for event in Event if event not in {*sent, *received}
    ]
    problems += [f"client → server {event.value} has no request schema" for event in sent if event not in requests]
    problems += [
        f"server → client {event.value} has no struct in SERVER_EVENTS"
        for event in received
        if event not in server_events
    ]
    problems += [f"request schema {event} is not listed client → server" for event in requests if event not in sent]
    problems += [
        f"SERVER_EVENTS {event} is not listed server → client" for event in server_events if event not in received
    ]
    problems += [
        f"reply {reply.value} is not a server → client event"
        for replies in REPLIES.values()
        for reply in replies
        if reply not in received
    ]
    problems += [f"error code {code.value} has no meaning" for code in ErrorCode if code not in ERROR_MEANINGS]
    problems += [f"close code {code} has no meaning" for code in close_codes().values() if code not in CLOSE_MEANINGS]
    if problems:
        raise IncompleteDescription("The AsyncAPI document cannot describe the protocol: " + "; ".join(problems))


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in a schema, ``node`` included."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _portable(components: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema patterns are ECMA-262 regular expressions: Python's ``\\Z`` (the end of
    the string, not before a trailing newline) is spelled ``$`` there."""
    for node in _walk(components):
        pattern = node.get("pattern")
        if isinstance(pattern, str) and pattern.endswith(r"\Z") and not pattern.endswith(r"\\Z"):
            node["pattern"] = pattern[:-2] + "$"
    return components


def _strict(components: dict[str, Any]) -> dict[str, Any]:
    """Server events are rebuilt from their declared fields: a struct's schema allows no
    other property (objects that are not structs, such as ``metadata``, keep theirs)."""
    for schema in components.values():
        if schema.get("type") == "object" and "properties" in schema:
            schema["additionalProperties"] = False
    return components


def _schemas(
    requests: Mapping[str, type[Struct]], server_events: Mapping[Event, type[Struct]]
) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """``components.schemas``, and the component name of each request's and each server
    event's data. A struct both sides use (a session description, a candidate) is
    described twice when they differ: lenient as the server reads it, and strict, named
    ``Server…``, as the server sends it."""
    request_types = list(dict.fromkeys(requests.values()))
    server_types = list(dict.fromkeys(server_events.values()))
    _, lenient = msgspec.json.schema_components(request_types, ref_template=SCHEMAS + "{name}")
    _, strict = msgspec.json.schema_components(server_types, ref_template=SCHEMAS + "{name}")
    lenient, strict = _portable(lenient), _strict(_portable(strict))
    renamed = {name: f"Server{name}" for name, schema in strict.items() if name in lenient and lenient[name] != schema}
    for node in _walk(strict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.removeprefix(SCHEMAS) in renamed:
            node["$ref"] = SCHEMAS + renamed[ref.removeprefix(SCHEMAS)]
    components = dict(lenient)
    for name, schema in strict.items():
        new_name = renamed.get(name, name)
        if new_name != name:
            schema = {**schema, "title": new_name}
            schema["description"] = f"{name} as the server sends it: no other property."
        components[new_name] = schema
    request_names = {event: _name(struct) for event, struct in requests.items()}
    server_names = {str(event): renamed.get(_name(struct), _name(struct)) for event, struct in server_events.items()}
    return components, request_names, server_names


def _name(struct: type[Struct]) -> str:
    return struct.__name__


def _describe_codes(components: dict[str, Any]) -> None:
    error_code = components.setdefault("ErrorCode", {"title": "ErrorCode", "enum": sorted(ErrorCode)})
    error_code["description"] = (
        "The `error` of a `webrtc:signaling-error` (docs/protocol.md §5 rule 6):\n\n"
        + "\n".join(f"- `{code.value}`: {ERROR_MEANINGS[code]}" for code in ErrorCode)
    )
    codes = close_codes()
    components["CloseCode"] = {
        "title": "CloseCode",
        "type": "integer",
        "enum": sorted(codes.values()),
        "description": "The websocket close codes of the server (docs/protocol.md §8):\n\n"
        + "\n".join(
            f"- {code} ({name}): {CLOSE_MEANINGS[code]}"
            for name, code in sorted(codes.items(), key=lambda item: item[1])
        ),
    }
    components["RequestId"] = {
        "title": "RequestId",
        "description": (
            f"A string or an integer of at most {MAX_REQUEST_ID_CHARS} characters (an integer counts its digits)."
        ),
        "anyOf": [{"type": "string", "maxLength": MAX_REQUEST_ID_CHARS}, {"type": "integer"}],
    }


def _slug(event: Event) -> str:
    return event.value.removeprefix("webrtc:")


def _message(direction: str, event: Event, data_schema: str, *, with_id: bool, strict: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {"event": {"const": event.value}, "data": {"$ref": SCHEMAS + data_schema}}
    if with_id:
        properties["id"] = {"$ref": SCHEMAS + "RequestId"}
    payload: dict[str, Any] = {"type": "object", "properties": properties, "required": ["event", "data"]}
    if strict:
        payload["additionalProperties"] = False
    message: dict[str, Any] = {
        "name": event.value,
        "title": f"{event.value} ({'client → server' if direction == 'client' else 'server → client'})",
        "contentType": "application/json",
        "payload": payload,
    }
    if summary := SUMMARIES.get((direction, event)):
        message["summary"] = summary
    return message


def _message_ref(key: str) -> dict[str, str]:
    return {"$ref": f"#/channels/{CHANNEL}/messages/{key}"}


def build_document(
    requests: Mapping[str, type[Struct]] = REQUEST_SCHEMAS,
    server_events: Mapping[Event, type[Struct]] = SERVER_EVENTS,
    client_to_server: Iterable[Event] = CLIENT_TO_SERVER,
    server_to_client: Iterable[Event] = SERVER_TO_CLIENT,
) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the protocol; raises ``IncompleteDescription``."""
    sent, received = list(client_to_server), list(server_to_client)
    check_complete(requests, server_events, sent, received)
    components, request_names, server_names = _schemas(requests, server_events)
    _describe_codes(components)
    replies = {reply for options in REPLIES.values() for reply in options}

    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for event in sent:
        key = f"client.{_slug(event)}"
        messages[key] = _message("client", event, request_names[event], with_id=True, strict=False)
        operation: dict[str, Any] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{CHANNEL}"},
            "title": f"Send {event.value}",
            "messages": [_message_ref(key)],
        }
        if event in REPLIES:
            operation["reply"] = {
                "channel": {"$ref": f"#/channels/{CHANNEL}"},
                "messages": [_message_ref(f"server.{_slug(reply)}") for reply in REPLIES[event]],
            }
        operations[f"send.{_slug(event)}"] = operation
    for event in received:
        key = f"server.{_slug(event)}"
        messages[key] = _message("server", event, server_names[event], with_id=event in replies, strict=True)
        operations[f"receive.{_slug(event)}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{CHANNEL}"},
            "title": f"Receive {event.value}",
            "messages": [_message_ref(key)],
        }

    host = {"host": {"default": "localhost:8000", "description": "The server's host and port."}}
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": "urn:webrtc-signaling:calls",
        "info": {
            "title": "WebRTC call signaling",
            "version": PROTOCOL_VERSION,
            "description": (
                f"The signaling protocol, version {PROTOCOL_VERSION}, between the call signaling server and its "
                "clients: joining rooms, relaying SDP offers, answers and ICE candidates, and the server's events. "
                "The complete contract, with its rules and their order, is docs/protocol.md.\n\n"
                "Operations are seen from a client: `send` is client → server, `receive` server → client. "
                "Each message's payload is the native framing's envelope; on the Socket.IO endpoint only its "
                "`data` is sent, as the argument of the event of the same name.\n\n"
                "Error codes: see the `ErrorCode` schema; close codes: see the `CloseCode` schema."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "native": {
                "host": "{host}",
                "protocol": "ws",
                "pathname": "/ws/calls/",
                "title": "Native websocket endpoint",
                "description": NATIVE_FRAMING,
                "variables": host,
                "security": [
                    {"$ref": "#/components/securitySchemes/queryToken"},
                    {"$ref": "#/components/securitySchemes/bearerToken"},
                ],
            },
            "socketio": {
                "host": "{host}",
                "protocol": "ws",
                "protocolVersion": "Engine.IO 4, Socket.IO 5",
                "pathname": "/socket.io/",
                "title": "Socket.IO compatibility endpoint",
                "description": SOCKET_IO_FRAMING,
                "variables": host,
            },
        },
        "channels": {
            CHANNEL: {
                "title": "Call signaling",
                "description": "The connection itself: every event travels on the one connection a client opens.",
                "messages": messages,
            }
        },
        "operations": operations,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "queryToken": {
                    "type": "httpApiKey",
                    "name": "token",
                    "in": "query",
                    "description": "An access token of `POST /api/auth/token/`, as `?token=`.",
                },
                "bearerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token in `Authorization: Bearer` (non-browser clients).",
                },
            },
        },
    }


@cache
def document_json() -> bytes:
    """The document as JSON, built once per process."""
    return msgspec.json.encode(build_document())
