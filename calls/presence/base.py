"""The presence interface: the live state of call rooms.

Which connections are in which room, in join order, with their participant records
and the channel that currently reaches each one. ``socketId`` is a logical id mapped to
a channel name, so that a resumed connection can take over an id. A connection lost
without a close frame is *parked* (docs/protocol.md §6): it keeps its place, its channel
becomes ``parked#<socketId>``, and what is addressed to it is buffered here, where any
process can take it over.

Every method is atomic: an implementation must never let two callers interleave inside
one of them (the in-process store has no ``await`` inside a method; the Redis store runs
each one as a single Lua script). The rules of docs/protocol.md §5 rely on that: of n
concurrent first joins exactly one creates the room, and capacity is never exceeded.

This module knows nothing of Django, websockets or the wire format.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


@dataclass(frozen=True, slots=True)
class Participant:
    socket_id: str
    user_id: str
    username: str
    display_name: str
    joined_at: str  # ISO 8601 UTC
    # What it sends (docs/protocol.md §5 rule 11); ``video`` None: as the room's call type.
    audio: bool = True
    video: bool | None = None
    screen: bool = False

    def wire(self) -> dict[str, Any]:
        """The participant object of docs/protocol.md §4."""
        return {
            "socketId": self.socket_id,
            "userId": self.user_id,
            "username": self.username,
            "displayName": self.display_name,
            "joinedAt": self.joined_at,
            "media": {"audio": self.audio, "video": bool(self.video), "screen": self.screen},
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Participant:
        media = data.get("media") or {"audio": True, "video": True, "screen": False}
        return cls(
            data["socketId"],
            data["userId"],
            data["username"],
            data["displayName"],
            data["joinedAt"],
            bool(media["audio"]),
            bool(media["video"]),
            bool(media["screen"]),
        )


def room_key(room_id: str, group_id: str | None) -> str:
    """What presence names a room by: its ``callRoomId`` together with its group
    (docs/protocol.md §5 rule 1), so that a group's room can never be taken, filled or
    locked by someone outside the group who joined the same id first. ``@`` cannot occur
    in a ``callRoomId``, so no ungrouped room's key looks like a group's."""
    return room_id if group_id is None else f"{room_id}@{group_id}"


@dataclass(frozen=True, slots=True)
class RoomSession:
    """One live session of a room: what its creator set, fixed for its lifetime."""

    room_id: str  # the callRoomId
    session_id: str
    metadata: dict[str, Any]  # the room metadata of docs/protocol.md §4
    group_id: str | None = None

    @property
    def key(self) -> str:
        return room_key(self.room_id, self.group_id)


@dataclass(frozen=True, slots=True)
class Member:
    participant: Participant
    channel_name: str


class JoinStatus(Enum):
    CREATED = "created"  # the room had no live session: this join started one
    JOINED = "joined"
    ALREADY_IN_ROOM = "already-in-room"
    FORBIDDEN = "forbidden"  # the room is a group's, and the joiner is not in it
    FULL = "full"
    LOCKED = "locked"  # and the joiner may not pass a lock
    BANNED = "banned"  # the joiner's user is banned from the room until ``banned_until``


@dataclass(frozen=True, slots=True)
class Departure:
    """A participant removed from a room, and what is left there."""

    session: RoomSession
    participant: Participant
    remaining: tuple[Member, ...]

    @property
    def room_emptied(self) -> bool:
        return not self.remaining


@dataclass(frozen=True, slots=True)
class JoinOutcome:
    status: JoinStatus
    session: RoomSession | None = None
    members: tuple[Member, ...] = ()  # everyone in the room after the join, oldest first
    previous: Departure | None = None  # the room this connection left to join this one
    locked: bool = False
    banned_until_ms: int | None = None

    def others(self, socket_id: str) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.participant.socket_id != socket_id)


class RouteStatus(Enum):
    OK = "ok"
    NO_ROOM = "no-room"  # no live session with that room id
    SENDER_NOT_IN_ROOM = "sender-not-in-room"
    TARGET_NOT_IN_ROOM = "target-not-in-room"


@dataclass(frozen=True, slots=True)
class Route:
    status: RouteStatus
    channels: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Forward:
    """An event that a store able to publish (Redis) sends, while routing, to members
    served by other processes: ``{"type": message_type, "to": [socketIds], "event":
    event, "data": data}`` (``data`` the event's data as JSON), once to each such
    process's ``<inbox>`` (a member's channel is ``<inbox>#<socketId>``, see
    ``calls.delivery``). Members whose inbox is ``inbox`` are left to the caller."""

    inbox: str
    message_type: str
    event: str
    data: bytes


PARKED_INBOX = "parked"  # the inbox part of a parked participant's channel


def parked_channel(socket_id: str) -> str:
    return f"{PARKED_INBOX}#{socket_id}"


Buffered = tuple[str, bytes]  # a message kept for a parked participant: its event, its data as JSON


@dataclass(frozen=True, slots=True)
class Parking:
    """A connection to park: its place is kept until ``grace_secs`` have passed.

    ``pending`` are messages that were addressed to it and not sent (they come first).
    ``epoch`` is the resume token's: the one the client holds. ``offset`` is the last
    Socket.IO offset sent. ``fence``: the inbox of the parking process, told
    ``calls.fence`` once the channel is switched, so that it knows when nothing more
    routed before the switch can arrive; without one the parking is sealed at once."""

    socket_id: str
    user_id: str
    epoch: int
    offset: int
    grace_secs: float
    capacity: int  # CALLS_RESUME_BUFFER
    pending: tuple[Buffered, ...] = ()
    fence: str | None = None


class ResumeStatus(Enum):
    RESUMED = "resumed"
    UNKNOWN = "unknown"  # not parked (never, no more, or someone else resumed it first)
    FOREIGN = "foreign"  # parked for another user
    USED = "used"  # a token of another epoch: already used
    UNSEALED = "unsealed"  # messages routed before the park may still arrive: ask again
    LIVE = "live"  # not parked but connected: ``channel`` reaches it


@dataclass(frozen=True, slots=True)
class Resumption:
    status: ResumeStatus
    session: RoomSession | None = None  # the room it is back in, if any
    participant: Participant | None = None
    epoch: int = 0
    offset: int = 0
    missed: tuple[Buffered, ...] = ()  # in order, at most the buffer's capacity
    dropped: int = 0  # messages dropped from the buffer, oldest first
    channel: str | None = None  # LIVE: the channel of the connection that holds the id


@dataclass(frozen=True, slots=True)
class Expired:
    """A parked participant whose grace ended: its room's departure, if it was in one."""

    socket_id: str
    user_id: str
    dropped: int
    departure: Departure | None


@dataclass(frozen=True, slots=True)
class RingRecord:
    """One ring (docs/protocol.md §9): who rang, for which room, until when."""

    ring_id: str
    room_key: str
    room_id: str
    group_id: str
    call_type: str
    session_id: str
    ringer: Participant
    expires_at_ms: int  # Unix time in ms


@dataclass(frozen=True, slots=True)
class RingEnd:
    """A callee's ring that ended, once."""

    ring: RingRecord
    user_id: str
    outcome: str


class PresenceUnavailable(Exception):
    """The store cannot be reached; the operation did not happen."""


class PresenceEvicted(Exception):
    """Peers declared this process dead (its lease expired) and removed its members.

    ``channels`` are the channels of the connections it still served: they must be
    closed, since their rooms were told they left."""

    def __init__(self, channels: list[str]) -> None:
        super().__init__(f"{len(channels)} connections evicted")
        self.channels = channels


class Presence(abc.ABC):
    """Live room membership. All methods are coroutines and atomic."""

    # Whether other processes share this store (and so need leases and reaping).
    shared: bool = False

    @classmethod
    def from_settings(cls, settings: object) -> Presence:
        """Build the store from Django settings."""
        return cls()

    @abc.abstractmethod
    async def join(
        self,
        *,
        new_session: RoomSession,
        member: Member,
        capacity: int,
        group_ids: frozenset[str],
        moderator: bool = False,
    ) -> JoinOutcome:
        """Put ``member`` in the room ``new_session.key``.

        If the room has no live session, ``new_session`` becomes it (``CREATED``);
        otherwise the live one is kept and ``new_session`` is ignored. A join to a
        group's room by someone whose ``group_ids`` lack the group answers ``FORBIDDEN``,
        by a banned user ``BANNED``, to a locked room by someone who is neither
        ``moderator`` nor (in an ungrouped room) its creator ``LOCKED``, to a room with ``capacity`` members
        ``FULL``; all of them change nothing. A member already in the room gets
        ``ALREADY_IN_ROOM``; one in another room is moved (``previous``). A member whose
        participant's ``video`` is None sends video if the room's call type is video.
        """

    @abc.abstractmethod
    async def leave(self, *, room_key: str, socket_id: str) -> Departure | None:
        """Remove a member; ``None`` if it is not in that room. The last one out ends
        the session."""

    @abc.abstractmethod
    async def room_of(self, *, socket_id: str) -> str | None:
        """The room a member is in."""

    @abc.abstractmethod
    async def session(self, *, room_key: str) -> RoomSession | None:
        """The live session of a room."""

    @abc.abstractmethod
    async def members(self, *, room_key: str) -> tuple[Member, ...]:
        """The members of a room, oldest first."""

    @abc.abstractmethod
    async def open_connection(self, *, user_id: str, socket_id: str, channel_name: str, limit: int) -> bool:
        """Count a new connection of a user, across every process sharing the store:
        ``False`` (and nothing counted) if the user already holds ``limit``."""

    @abc.abstractmethod
    async def close_connection(self, *, user_id: str, socket_id: str) -> None:
        """Stop counting a connection (a no-op if it is not counted)."""

    @abc.abstractmethod
    async def connections_of(self, *, user_id: str) -> tuple[str, ...]:
        """The channels of every open connection of a user, on any process."""

    def forget(self, socket_id: str) -> None:  # noqa: B027 - only a shared store keeps copies
        """Another process put this process's connection out of its room (a kick, the end
        of the call): drop what this process keeps of that membership."""

    async def ping(self) -> None:  # noqa: B027 - nothing to reach for an in-process store
        """Raise ``PresenceUnavailable`` if the store cannot be reached."""

    async def heartbeat(self) -> None:  # noqa: B027 - a no-op unless the store is shared
        """Renew this process's lease (a shared store's liveness); raises
        ``PresenceEvicted`` if peers already declared it dead."""

    async def reap(self) -> list[Departure]:
        """Remove the members and connections of processes whose lease expired; each
        departure is returned to exactly one caller, across processes."""
        return []

    # -- media, locks, bans, the end of a call (docs/protocol.md §5 rule 11, §10) ----

    @abc.abstractmethod
    async def update_media(
        self, *, room_key: str, socket_id: str, audio: bool, video: bool, screen: bool
    ) -> tuple[Participant, tuple[Member, ...]] | None:
        """Set a member's media: the participant as it is now and the room's members;
        ``None`` if it is not in that room."""

    @abc.abstractmethod
    async def set_locked(self, *, room_key: str, locked: bool) -> tuple[Member, ...]:
        """Lock or unlock a live room (the lock ends with its session); its members."""

    @abc.abstractmethod
    async def ban(self, *, room_key: str, user_id: str, until_ms: int) -> None:
        """Keep a user out of a room (any of its sessions) until a Unix time in ms."""

    @abc.abstractmethod
    async def end_room(self, *, room_key: str) -> tuple[RoomSession, tuple[Member, ...]] | None:
        """End a room's session at once: every member is out; the session and its
        members as they were, or ``None`` if it had none."""

    # -- rings (docs/protocol.md §9) ------------------------------------------------

    @abc.abstractmethod
    async def start_ring(self, ring: RingRecord, user_ids: list[str]) -> list[str]:
        """Ring these users for ``ring.room_key`` until ``ring.expires_at_ms``; those
        already rung for that room keep their ring. Returns the users rung now."""

    @abc.abstractmethod
    async def end_rings(
        self,
        *,
        outcome: str,
        ring_id: str | None = None,
        room_key: str | None = None,
        user_id: str | None = None,
        ringer_user_id: str | None = None,
    ) -> list[RingEnd]:
        """End the rings still ringing that match: a ring's callees (``ring_id``, with
        ``user_id`` one of them; with ``ringer_user_id`` only if it is that user's ring),
        or a room's (``room_key``, with ``user_id`` that user's). Each ends once."""

    @abc.abstractmethod
    async def expire_rings(self) -> list[RingEnd]:
        """End as ``missed`` the rings whose time is up; each to one caller."""

    @abc.abstractmethod
    async def rings_of(self, *, user_id: str) -> list[RingRecord]:
        """The rings ringing a user now."""

    # -- parked participants (docs/protocol.md §6) ----------------------------------

    @abc.abstractmethod
    async def park(self, parking: Parking) -> None:
        """Park a connection: its channel in its room (if any) and among its user's
        connections becomes ``parked_channel``; it stops belonging to this process (a
        dead process's reap leaves it alone); it no longer counts as this process's."""

    @abc.abstractmethod
    async def buffer(self, *, socket_ids: list[str], message: Buffered) -> list[str]:
        """Keep a message for parked participants (dropping each one's oldest past its
        ``Parking.capacity``). Returns the channels of those that resumed since they were
        routed to, for the message to go there; ids that have left are skipped."""

    @abc.abstractmethod
    async def buffer_late(self, *, socket_id: str, user_id: str, epoch: int, message: Buffered) -> str | None:
        """A message routed to a parked participant's old channel before the park, that
        arrived after it: kept before everything buffered since the park, if it is still
        parked (``None``); else the channel that reaches it now, if it resumed (or
        ``None`` when it is gone)."""

    @abc.abstractmethod
    async def seal(self, *, socket_id: str, epoch: int) -> None:
        """Nothing routed before the park can arrive any more: a resume may take it."""

    @abc.abstractmethod
    async def resume(
        self, *, socket_id: str, user_id: str, epoch: int | None, channel_name: str, force: bool
    ) -> Resumption:
        """Take a parked participant over for ``channel_name`` (this process's), with
        everything buffered for it; atomic, so of two resumes one wins. ``epoch`` None:
        any. ``force``: even if it is not sealed."""

    @abc.abstractmethod
    async def expire_parked(self) -> list[Expired]:
        """Remove the parked participants whose grace has ended: each is returned to
        exactly one caller, across processes, also if the process that parked it died."""

    @abc.abstractmethod
    async def parked_count(self) -> int:
        """How many participants are parked, on every process."""

    @abc.abstractmethod
    async def route(self, *, room_key: str, sender: str, target: str | None, forward: Forward | None = None) -> Route:
        """Channels to relay to: the target's, or every other member's when ``target``
        is ``None``. Checks that the sender (and the target) are in the room.

        With ``forward``, a store that can publish sends it to the members of other
        processes itself and returns only the channels left for this process; one that
        cannot returns them all."""

    @abc.abstractmethod
    async def locked(self, *, room_key: str) -> bool:
        """Whether a room's live session is locked (docs/protocol.md §10); ``False`` for
        a room without one. Read-only."""
