"""The signaling protocol of docs/protocol.md: event names, client request schemas, error
codes and close codes. Nothing else in the code spells an event name or an error code.

Parsing follows the order of docs/protocol.md §3: frame size and type → (rate limit, done by
the transport) → JSON object with a string ``event`` and an object ``data`` → known
event → field rules. Unknown keys are ignored and never relayed: every outgoing payload
is rebuilt from the declared fields below.
"""

from __future__ import annotations

import datetime as dt
import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal, Protocol

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

MAX_METADATA_BYTES = 4096  # docs/protocol.md §3: metadata is at most 4 KiB serialized
MAX_METADATA_DEPTH = 8
MAX_FRAME_DEPTH = 32  # deeper frames are refused before decoding, which would recurse
MAX_REQUEST_ID_CHARS = 64
MAX_SDP_MID_CHARS = 256
MAX_SDP_MLINE_INDEX = 65535


class Event(StrEnum):
    # client → server
    JOIN_ROOM = "webrtc:join-room"
    LEAVE_ROOM = "webrtc:leave-room"
    OFFER = "webrtc:offer"
    ANSWER = "webrtc:answer"
    ICE_CANDIDATE = "webrtc:ice-candidate"
    REFRESH_AUTH = "webrtc:refresh-auth"
    MEDIA_STATE = "webrtc:media-state"
    RING = "webrtc:ring"
    RING_REPLY = "webrtc:ring-reply"
    RING_CANCEL = "webrtc:ring-cancel"
    KICK = "webrtc:kick"
    END_CALL = "webrtc:end-call"
    LOCK_ROOM = "webrtc:lock-room"
    # server → client (offer, answer and ice-candidate are relayed under their own names)
    CONNECTED = "webrtc:connected"
    RESUMED = "webrtc:resumed"
    ROOM_JOINED = "webrtc:room-joined"
    ROOM_LEFT = "webrtc:room-left"
    PARTICIPANT_JOINED = "webrtc:participant-joined"
    PARTICIPANT_LEFT = "webrtc:participant-left"
    SIGNALING_ERROR = "webrtc:signaling-error"
    ACK = "webrtc:ack"
    PARTICIPANT_UPDATED = "webrtc:participant-updated"
    ROOM_UPDATED = "webrtc:room-updated"
    KICKED = "webrtc:kicked"
    CALL_ENDED = "webrtc:call-ended"
    RING_STARTED = "webrtc:ring-started"
    INCOMING_CALL = "webrtc:incoming-call"
    RING_UPDATED = "webrtc:ring-updated"
    RING_ENDED = "webrtc:ring-ended"


class ErrorCode(StrEnum):
    INVALID_MESSAGE = "invalid-message"
    UNKNOWN_EVENT = "unknown-event"
    ROOM_NOT_FOUND = "room-not-found"
    NOT_IN_ROOM = "not-in-room"
    PARTICIPANT_NOT_FOUND = "participant-not-found"
    FORBIDDEN = "forbidden"
    ROOM_FULL = "room-full"
    ROOM_LOCKED = "room-locked"
    RING_NOT_FOUND = "ring-not-found"
    MESSAGE_TOO_LARGE = "message-too-large"
    RATE_LIMITED = "rate-limited"
    RESUME_FAILED = "resume-failed"
    INTERNAL_ERROR = "internal-error"


class LeaveReason(StrEnum):
    LEFT = "left"
    DISCONNECTED = "disconnected"
    SWITCHED_ROOM = "switched-room"
    LOST = "lost"
    REMOVED = "removed"  # no longer a member of the room's group
    KICKED = "kicked"


class RingOutcome(StrEnum):
    """How one callee's ring ended (docs/protocol.md §9)."""

    ACCEPTED = "accepted"
    DECLINED = "declined"
    MISSED = "missed"
    CANCELLED = "cancelled"
    CALL_ENDED = "call-ended"


class CloseCode:
    """Close codes of docs/protocol.md §8, as plain ints (autobahn refuses int subclasses)."""

    GOING_AWAY: Final = 1001
    UNAUTHENTICATED: Final = 4401
    TOO_MANY_CONNECTIONS: Final = 4409
    FLOODING: Final = 4429


RequestId = str | int


class SignalingError(Exception):
    """A request the protocol refuses; answered to its sender only, changing nothing."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        event: str | None = None,
        request_id: RequestId | None = None,
        room_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.event = event
        self.request_id = request_id
        self.room_id = room_id  # for the log only; never sent

    def payload(self) -> SignalingErrorData:
        return SignalingErrorData(
            error=self.code,
            message=self.message,
            timestamp=utc_now_iso(),
            details=self.details if self.details else UNSET,
            event=self.event if self.event else UNSET,
        )


def utc_now_iso() -> str:
    """Now as ISO 8601 UTC with milliseconds, like JavaScript's ``toISOString()``."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_utc(unix_time: float) -> str:
    """A Unix time in the format of ``utc_now_iso``."""
    return dt.datetime.fromtimestamp(unix_time, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------
# Client request schemas (docs/protocol.md §3)
# ---------------------------------------------------------------------------

# \Z, not $: "$" also matches before a trailing newline, which would split log lines.
RoomId = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+\Z")]
SocketId = Annotated[str, Meta(min_length=1, max_length=128)]
SdpMid = Annotated[str, Meta(max_length=MAX_SDP_MID_CHARS)] | None
SdpMLineIndex = Annotated[int, Meta(ge=0, le=MAX_SDP_MLINE_INDEX)] | None


class SessionDescription(Struct, frozen=True):
    """An RTCSessionDescriptionInit."""

    type: Literal["offer", "answer"]
    sdp: str

    def wire(self) -> dict[str, Any]:
        return {"type": self.type, "sdp": self.sdp}


class IceCandidateInit(Struct, frozen=True):
    """An RTCIceCandidateInit; an empty ``candidate`` means end-of-candidates."""

    candidate: str
    sdpMid: SdpMid | UnsetType = UNSET
    sdpMLineIndex: SdpMLineIndex | UnsetType = UNSET
    usernameFragment: str | UnsetType | None = UNSET

    def wire(self) -> dict[str, Any]:
        return _present_fields(self)


class Media(Struct, frozen=True):
    """What a participant sends (docs/protocol.md §5 rule 11)."""

    audio: bool
    video: bool
    screen: bool = False


class JoinRoom(Struct, frozen=True):
    callRoomId: RoomId
    callType: Literal["audio", "video"] | None = None
    metadata: dict[str, Any] | None = None
    media: Media | None = None


class LeaveRoom(Struct, frozen=True):
    callRoomId: RoomId


class Offer(Struct, frozen=True):
    callRoomId: RoomId
    targetSocketId: SocketId
    offer: SessionDescription
    sdpMid: SdpMid | UnsetType = UNSET
    sdpMLineIndex: SdpMLineIndex | UnsetType = UNSET


class Answer(Struct, frozen=True):
    callRoomId: RoomId
    targetSocketId: SocketId
    answer: SessionDescription


class IceCandidate(Struct, frozen=True):
    callRoomId: RoomId
    candidate: IceCandidateInit | str
    targetSocketId: SocketId | None = None
    sdpMid: SdpMid | UnsetType = UNSET
    sdpMLineIndex: SdpMLineIndex | UnsetType = UNSET


class RefreshAuth(Struct, frozen=True):
    token: str


class MediaState(Struct, frozen=True):
    callRoomId: RoomId
    audio: bool
    video: bool
    screen: bool = False


UserId = Annotated[str, Meta(min_length=1, max_length=64)]
RingId = Annotated[str, Meta(min_length=1, max_length=64)]
MAX_BAN_SECS = 86400


class Ring(Struct, frozen=True):
    callRoomId: RoomId
    userIds: Annotated[list[UserId], Meta(min_length=1, max_length=64)] | None = None


class RingReply(Struct, frozen=True):
    ringId: RingId
    response: Literal["accept", "decline"]


class RingCancel(Struct, frozen=True):
    ringId: RingId


class Kick(Struct, frozen=True):
    callRoomId: RoomId
    targetSocketId: SocketId
    banSecs: Annotated[int, Meta(ge=0, le=MAX_BAN_SECS)] = 0


class EndCall(Struct, frozen=True):
    callRoomId: RoomId


class LockRoom(Struct, frozen=True):
    callRoomId: RoomId
    locked: bool


Request = (
    JoinRoom
    | LeaveRoom
    | Offer
    | Answer
    | IceCandidate
    | RefreshAuth
    | MediaState
    | Ring
    | RingReply
    | RingCancel
    | Kick
    | EndCall
    | LockRoom
)

REQUEST_SCHEMAS: dict[str, type[Request]] = {
    Event.JOIN_ROOM: JoinRoom,
    Event.LEAVE_ROOM: LeaveRoom,
    Event.OFFER: Offer,
    Event.ANSWER: Answer,
    Event.ICE_CANDIDATE: IceCandidate,
    Event.REFRESH_AUTH: RefreshAuth,
    Event.MEDIA_STATE: MediaState,
    Event.RING: Ring,
    Event.RING_REPLY: RingReply,
    Event.RING_CANCEL: RingCancel,
    Event.KICK: Kick,
    Event.END_CALL: EndCall,
    Event.LOCK_ROOM: LockRoom,
}


def _present_fields(struct: Struct) -> dict[str, Any]:
    """The struct's fields that the client actually sent (``UNSET`` ones left out)."""
    return {name: value for name in struct.__struct_fields__ if (value := getattr(struct, name)) is not UNSET}


class _Envelope(Struct):
    # Raw slices: the envelope is checked field by field, so that an error can still
    # name the event and echo the id of a frame whose other parts are wrong.
    event: Raw | UnsetType = UNSET
    data: Raw | UnsetType = UNSET
    id: Raw | UnsetType = UNSET


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_event_decoder = msgspec.json.Decoder(str)
_id_decoder = msgspec.json.Decoder(RequestId)
_request_decoders = {event: msgspec.json.Decoder(schema) for event, schema in REQUEST_SCHEMAS.items()}
# By name: a dict lookup, where Event(name) goes through the enum machinery on every frame.
_EVENTS = {event.value: event for event in Event}
_encoder = msgspec.json.Encoder()

BAD_ENVELOPE = 'A frame must be a JSON object with a string "event" and an object "data".'
TOO_DEEP = f"A frame may nest at most {MAX_FRAME_DEPTH} levels deep."
BAD_ID = f'"id" must be a string or an integer of at most {MAX_REQUEST_ID_CHARS} characters.'


class ParsedRequest(Struct, frozen=True):
    event: Event
    request: Request
    request_id: RequestId | None


def _decoded(decoder: msgspec.json.Decoder, raw: Raw | UnsetType) -> Any:
    """The value of an envelope field, or ``None`` if it is missing or of the wrong type."""
    if raw is UNSET:
        return None
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError:
        return None


def parse_frame(text: str | bytes) -> ParsedRequest:
    """Decode one client frame into a validated request, or raise ``SignalingError``.

    The frame size and type checks belong to the transport, which sees the raw frame.
    """
    if nests_deeper_than(text, MAX_FRAME_DEPTH):
        raise SignalingError(ErrorCode.INVALID_MESSAGE, TOO_DEEP, details={"maxDepth": MAX_FRAME_DEPTH})
    try:
        envelope = _envelope_decoder.decode(text)
    except msgspec.DecodeError as exc:  # not JSON, or not an object: nothing to echo
        raise SignalingError(ErrorCode.INVALID_MESSAGE, BAD_ENVELOPE, details={"reason": str(exc)}) from None
    event = _decoded(_event_decoder, envelope.event)
    request_id = _decoded(_id_decoder, envelope.id)
    if request_id is not None and len(str(request_id)) > MAX_REQUEST_ID_CHARS:
        request_id = None
    if envelope.id is not UNSET and request_id is None:
        raise SignalingError(ErrorCode.INVALID_MESSAGE, BAD_ID, event=event)
    if event is None:
        raise SignalingError(ErrorCode.INVALID_MESSAGE, BAD_ENVELOPE, request_id=request_id)
    return parse_request(event, None if envelope.data is UNSET else bytes(envelope.data), request_id)


def parse_request(event: str, data: bytes | None, request_id: RequestId | None = None) -> ParsedRequest:
    """Validate one request of any transport: its event name, and its data as raw JSON
    (``None`` when the transport got none), in the order of docs/protocol.md §3."""
    if data is None or not data.lstrip().startswith(b"{"):
        raise SignalingError(ErrorCode.INVALID_MESSAGE, BAD_ENVELOPE, event=event, request_id=request_id)
    decoder = _request_decoders.get(event)
    if decoder is None:
        raise SignalingError(
            ErrorCode.UNKNOWN_EVENT, "This server does not know that event.", event=event, request_id=request_id
        )
    try:
        request = decoder.decode(data)
        if isinstance(request, JoinRoom) and request.metadata is not None:
            request = _checked_join_metadata(request)
    except (msgspec.ValidationError, ValueError) as exc:
        raise SignalingError(
            ErrorCode.INVALID_MESSAGE,
            f"The {event} request is invalid: {exc}",
            details={"reason": str(exc)},
            event=event,
            request_id=request_id,
        ) from None
    return ParsedRequest(event=_EVENTS[event], request=request, request_id=request_id)


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(rb"[\[\]{}]")


def nests_deeper_than(text: str | bytes, limit: int) -> bool:
    """Whether a JSON text nests arrays and objects deeper than ``limit``. Cheap for
    ordinary frames: only a text with more than ``limit`` opening brackets is scanned."""
    if isinstance(text, str):
        if text.count("[") + text.count("{") <= limit:
            return False
        raw = text.encode()
    else:
        raw = text
        if raw.count(b"[") + raw.count(b"{") <= limit:
            return False
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub(b"", raw)):
        if match.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _depth(value: Any) -> int:
    """The nesting depth of a decoded JSON value (an object of scalars is 1 deep)."""
    if isinstance(value, dict):
        return 1 + max((_depth(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(item) for item in value), default=0)
    return 0


def _checked_join_metadata(request: JoinRoom) -> JoinRoom:
    """Enforce the 4 KiB limit and normalize ``groupId`` to a string of digits."""
    metadata = dict(request.metadata or {})
    if _depth(metadata) > MAX_METADATA_DEPTH:
        raise ValueError(f"metadata may nest at most {MAX_METADATA_DEPTH} levels deep - at `$.metadata`")
    size = len(_encoder.encode(metadata))
    if size > MAX_METADATA_BYTES:
        raise ValueError(
            f"metadata is {size} bytes serialized; at most {MAX_METADATA_BYTES} are allowed - at `$.metadata`"
        )
    group_id = metadata.get("groupId")
    if group_id is None:
        metadata.pop("groupId", None)
    elif isinstance(group_id, int) and not isinstance(group_id, bool) and 0 < group_id < 2**63:
        metadata["groupId"] = str(group_id)
    elif isinstance(group_id, str) and group_id.isascii() and group_id.isdigit() and 0 < len(group_id) <= 18:
        metadata["groupId"] = str(int(group_id))
    else:
        raise ValueError("metadata.groupId must be a positive integer or a numeric string - at `$.metadata.groupId`")
    return msgspec.structs.replace(request, metadata=metadata)


# ---------------------------------------------------------------------------
# Server → client events (docs/protocol.md §4), declared: an event's data is always an
# instance of its struct, so that an undeclared field cannot reach a client.
# ---------------------------------------------------------------------------


class ParticipantData(Struct, frozen=True):
    socketId: str
    userId: str
    username: str
    displayName: str
    joinedAt: str  # ISO 8601 UTC
    media: Media


class Connected(Struct, frozen=True):
    socketId: str
    userId: str
    resumeToken: str
    authExpiresAt: str | None


class Resumed(Struct, frozen=True):
    socketId: str
    callRoomId: str | None  # None: it was in no room
    missed: int


class RoomJoined(Struct, frozen=True):
    callRoomId: str
    participantCount: int
    existingParticipants: list[ParticipantData]
    participant: ParticipantData
    metadata: dict[str, Any]
    iceServers: list[dict[str, Any]]
    locked: bool


class RoomLeft(Struct, frozen=True):
    callRoomId: str


class ParticipantJoined(Struct, frozen=True):
    callRoomId: str
    participant: ParticipantData


class ParticipantLeft(Struct, frozen=True):
    callRoomId: str
    participant: ParticipantData
    reason: LeaveReason


class RelayedOffer(Struct, frozen=True):
    callRoomId: str
    fromSocketId: str
    fromUserId: str
    offer: SessionDescription
    sdpMid: SdpMid | UnsetType = UNSET
    sdpMLineIndex: SdpMLineIndex | UnsetType = UNSET


class RelayedAnswer(Struct, frozen=True):
    callRoomId: str
    fromSocketId: str
    fromUserId: str
    answer: SessionDescription


class RelayedIceCandidate(Struct, frozen=True):
    callRoomId: str
    fromSocketId: str
    fromUserId: str
    candidate: IceCandidateInit | str
    sdpMid: SdpMid | UnsetType = UNSET
    sdpMLineIndex: SdpMLineIndex | UnsetType = UNSET


class SignalingErrorData(Struct, frozen=True):
    error: ErrorCode
    message: str
    timestamp: str
    details: dict[str, Any] | UnsetType = UNSET
    event: str | UnsetType = UNSET


class Ack(Struct, frozen=True):
    event: str


class ParticipantUpdated(Struct, frozen=True):
    callRoomId: str
    participant: ParticipantData


class RoomUpdated(Struct, frozen=True):
    callRoomId: str
    locked: bool
    by: ParticipantData


class Kicked(Struct, frozen=True):
    callRoomId: str
    by: ParticipantData
    bannedUntil: str | UnsetType = UNSET


class CallEnded(Struct, frozen=True):
    callRoomId: str
    by: ParticipantData


class RingStarted(Struct, frozen=True):
    ringId: str
    callRoomId: str
    userIds: list[str]
    expiresAt: str


class IncomingCall(Struct, frozen=True):
    ringId: str
    callRoomId: str
    groupId: str
    callType: str
    expiresAt: str
    # "from" is a keyword in Python
    from_: ParticipantData = msgspec.field(name="from")


class RingUpdated(Struct, frozen=True):
    ringId: str
    callRoomId: str
    userId: str
    status: RingOutcome


class RingEnded(Struct, frozen=True):
    ringId: str
    callRoomId: str
    reason: RingOutcome


SERVER_EVENTS: dict[Event, type[Struct]] = {
    Event.CONNECTED: Connected,
    Event.RESUMED: Resumed,
    Event.ROOM_JOINED: RoomJoined,
    Event.ROOM_LEFT: RoomLeft,
    Event.PARTICIPANT_JOINED: ParticipantJoined,
    Event.PARTICIPANT_LEFT: ParticipantLeft,
    Event.OFFER: RelayedOffer,
    Event.ANSWER: RelayedAnswer,
    Event.ICE_CANDIDATE: RelayedIceCandidate,
    Event.SIGNALING_ERROR: SignalingErrorData,
    Event.ACK: Ack,
    Event.PARTICIPANT_UPDATED: ParticipantUpdated,
    Event.ROOM_UPDATED: RoomUpdated,
    Event.KICKED: Kicked,
    Event.CALL_ENDED: CallEnded,
    Event.RING_STARTED: RingStarted,
    Event.INCOMING_CALL: IncomingCall,
    Event.RING_UPDATED: RingUpdated,
    Event.RING_ENDED: RingEnded,
}


class Wire(Protocol):
    """A transport's framing of server events (the native one below; Socket.IO's in
    its transport). ``name`` keys the cache of each event's encodings."""

    name: str

    def frame(self, event: Outgoing) -> str: ...


class Outgoing:
    """One server → client event as a value: the rules make these, and each transport
    frames them. The data is encoded to JSON once, and each framing once per event,
    however many recipients on however many transports receive it.

    An event that came from another process carries its data already encoded
    (``encoded``), and is never decoded here."""

    __slots__ = ("_encoded", "_framed", "_text", "_wire", "data", "event", "request_id")

    def __init__(
        self,
        event: str,
        data: Struct | None,
        request_id: RequestId | None = None,
        *,
        encoded: bytes | str | None = None,
    ) -> None:
        self.event = event
        self.data = data
        self.request_id = request_id
        self._encoded = encoded.encode() if isinstance(encoded, str) else encoded
        # The first framing, and any other (recipients on both transports).
        self._wire: Wire | None = None
        self._text = ""
        self._framed: dict[str, str] | None = None

    def encoded_data(self) -> bytes:
        if self._encoded is None:
            self._encoded = _encoder.encode(self.data)
        return self._encoded

    def buffered(self) -> tuple[str, bytes]:
        """The event as presence keeps it for a parked participant."""
        return self.event, self.encoded_data()

    def text(self, wire: Wire) -> str:
        if self._wire is wire:
            return self._text
        if self._wire is None:
            self._wire, self._text = wire, wire.frame(self)
            return self._text
        framed = self._framed
        if framed is None:
            framed = self._framed = {}
        text = framed.get(wire.name)
        if text is None:
            text = framed[wire.name] = wire.frame(self)
        return text

    def __repr__(self) -> str:
        return f"Outgoing({self.event!r}, id={self.request_id!r})"


class NativeWire:
    """docs/protocol.md §1: ``{"event", "data"[, "id"]}`` as one text frame."""

    name = "native"
    _heads: ClassVar[dict[str, bytes]] = {}  # by server event name: a few dozen

    def frame(self, event: Outgoing) -> str:
        head = self._heads.get(event.event)
        if head is None:
            head = self._heads[event.event] = b'{"event":' + _encoder.encode(event.event) + b',"data":'
        head += event.encoded_data()
        if event.request_id is not None:
            head += b',"id":' + _encoder.encode(event.request_id)
        return (head + b"}").decode()


NATIVE = NativeWire()


def error_event(error: SignalingError) -> Outgoing:
    return Outgoing(Event.SIGNALING_ERROR, error.payload(), error.request_id)
