"""What the rules know of one connection, whatever its transport."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from calls import process
from calls.history import RelayCounts
from calls.presence.base import Member, Participant, RoomSession
from calls.protocol import ErrorCode, Media, ParticipantData, SignalingError, utc_now_iso

if TYPE_CHECKING:
    from calls.delivery import Mailbox


NOT_IN_ROOM = "You are not in that call."


def new_socket_id() -> str:
    """An opaque, unguessable connection id (128 random bits)."""
    return secrets.token_urlsafe(16)


@dataclass(slots=True)
class Caller:
    """What the rules need to know of one connection, whatever its transport."""

    socket_id: str
    channel_name: str  # its address in calls.delivery
    user_id: str
    username: str
    display_name: str
    counts: RelayCounts = field(default_factory=RelayCounts)
    # The room this connection is in (its callRoomId, and its presence key, which adds
    # the group): set and cleared by this process as presence answers its joins and
    # leaves, so exact for its own connections.
    room_id: str | None = None
    room_key: str | None = None
    group_id: str | None = None
    session_id: str | None = None  # the room's live session (its history row)
    # When the credential the connection presented expires (a Unix time), if ever: the
    # credentials sweep (calls/credentials.py) closes it then, unless refreshed.
    auth_expires_at: float | None = None
    is_staff: bool = False  # moderates every room (docs/protocol.md §10)
    mailbox: Mailbox | None = None  # what the rules address to it waits here
    # Resume (docs/protocol.md §6): the epoch of the resume token it was given (each
    # resume gives the next), the last Socket.IO offset sent to it, and whether it is
    # parked (its connection is gone; its place is kept for a resume).
    epoch: int = 0
    offset: int = 0
    parked: bool = False

    def next_offset(self) -> str:
        self.offset += 1
        return str(self.offset)

    def enter(self, session: RoomSession) -> None:
        self.room_id, self.room_key = session.room_id, session.key
        self.group_id, self.session_id = session.group_id, session.session_id

    def exit(self) -> None:
        self.room_id = self.room_key = self.group_id = self.session_id = None

    def participant(self, media: Media | None = None) -> Participant:
        """Its participant record for a join (``media`` None: the defaults of
        docs/protocol.md §3, video as the room's call type)."""
        joined_at = utc_now_iso()
        if media is None:
            return Participant(self.socket_id, self.user_id, self.username, self.display_name, joined_at)
        return Participant(
            self.socket_id,
            self.user_id,
            self.username,
            self.display_name,
            joined_at,
            media.audio,
            media.video,
            media.screen,
        )

    def log_context(self) -> str:
        return f"socketId={self.socket_id} userId={self.user_id}"

    def named_room(self, room_id: str) -> str:
        """The key of the room a request's ``callRoomId`` names: the caller's own room
        when the id is its room's, else the ungrouped room of that id (which the caller
        is then not in: requests name the sender's own room, docs/protocol.md §5 rule 1)."""
        return self.room_key if self.room_id == room_id and self.room_key else room_id


def participant_data(participant: Participant) -> ParticipantData:
    return ParticipantData(
        socketId=participant.socket_id,
        userId=participant.user_id,
        username=participant.username,
        displayName=participant.display_name,
        joinedAt=participant.joined_at,
        media=Media(audio=participant.audio, video=bool(participant.video), screen=participant.screen),
    )


async def own_room(caller: Caller, room_id: str) -> tuple[RoomSession, tuple[Member, ...], Participant]:
    """The caller's room named by ``room_id`` as presence has it now: its session, its
    members and the caller's participant; ``not-in-room`` if the caller is not in it."""
    presence = process.current().presence
    if caller.room_id != room_id or caller.room_key is None:
        raise SignalingError(ErrorCode.NOT_IN_ROOM, NOT_IN_ROOM)
    session = await presence.session(room_key=caller.room_key)
    members = await presence.members(room_key=caller.room_key)
    me = next((m.participant for m in members if m.participant.socket_id == caller.socket_id), None)
    if session is None or me is None:
        raise SignalingError(ErrorCode.NOT_IN_ROOM, NOT_IN_ROOM)
    return session, members, me
