"""Presence held in this process: for a single-process deployment and for tests."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from calls.presence.base import (
    Buffered,
    Departure,
    Expired,
    Forward,
    JoinOutcome,
    JoinStatus,
    Member,
    Parking,
    Presence,
    ResumeStatus,
    Resumption,
    RoomSession,
    Route,
    RouteStatus,
    parked_channel,
)


@dataclass(slots=True)
class _Room:
    session: RoomSession
    members: dict[str, Member] = field(default_factory=dict)  # insertion order = join order


@dataclass(slots=True)
class _Parked:
    user_id: str
    epoch: int
    offset: int
    deadline: float  # time.monotonic()
    capacity: int
    sealed: bool
    early: deque[Buffered] = field(default_factory=deque)  # routed before the park (buffer_late)
    later: deque[Buffered] = field(default_factory=deque)  # routed since
    dropped: int = 0

    def keep(self, message: Buffered, *, late: bool) -> None:
        (self.early if late else self.later).append(message)
        while len(self.early) + len(self.later) > self.capacity:
            (self.early or self.later).popleft()
            self.dropped += 1


class InMemoryPresence(Presence):
    """Dicts guarded by the event loop: no method awaits, so each one is atomic."""

    def __init__(self) -> None:
        self._rooms: dict[str, _Room] = {}
        self._room_of: dict[str, str] = {}  # socketId -> room key
        self._connections: dict[str, dict[str, str]] = {}  # userId -> socketId -> channel
        self._parked: dict[str, _Parked] = {}

    async def join(
        self,
        *,
        new_session: RoomSession,
        member: Member,
        capacity: int,
        group_ids: frozenset[str],
    ) -> JoinOutcome:
        room_key = new_session.key
        socket_id = member.participant.socket_id
        if new_session.group_id is not None and new_session.group_id not in group_ids:
            return JoinOutcome(JoinStatus.FORBIDDEN)
        room = self._rooms.get(room_key)
        if room is not None:
            if socket_id in room.members:
                return JoinOutcome(JoinStatus.ALREADY_IN_ROOM, room.session, tuple(room.members.values()))
            if len(room.members) >= capacity:
                return JoinOutcome(JoinStatus.FULL)
        previous_room = self._room_of.get(socket_id)
        previous = self._remove(previous_room, socket_id) if previous_room else None
        status = JoinStatus.JOINED
        if room is None:
            room = self._rooms[room_key] = _Room(new_session)
            status = JoinStatus.CREATED
        room.members[socket_id] = member
        self._room_of[socket_id] = room_key
        return JoinOutcome(status, room.session, tuple(room.members.values()), previous)

    async def leave(self, *, room_key: str, socket_id: str) -> Departure | None:
        if self._room_of.get(socket_id) != room_key:
            return None
        return self._remove(room_key, socket_id)

    def _remove(self, room_key: str, socket_id: str) -> Departure:
        room = self._rooms[room_key]
        member = room.members.pop(socket_id)
        del self._room_of[socket_id]
        if not room.members:
            del self._rooms[room_key]
        return Departure(room.session, member.participant, tuple(room.members.values()))

    async def room_of(self, *, socket_id: str) -> str | None:
        return self._room_of.get(socket_id)

    async def session(self, *, room_key: str) -> RoomSession | None:
        room = self._rooms.get(room_key)
        return room.session if room else None

    async def members(self, *, room_key: str) -> tuple[Member, ...]:
        room = self._rooms.get(room_key)
        return tuple(room.members.values()) if room else ()

    async def route(self, *, room_key: str, sender: str, target: str | None, forward: Forward | None = None) -> Route:
        # One process: every member is this process's, ``forward`` has nothing to do.
        room = self._rooms.get(room_key)
        if room is None:
            return Route(RouteStatus.NO_ROOM)
        if sender not in room.members:
            return Route(RouteStatus.SENDER_NOT_IN_ROOM)
        if target is None:
            return Route(RouteStatus.OK, tuple(m.channel_name for sid, m in room.members.items() if sid != sender))
        member = room.members.get(target)
        if member is None:
            return Route(RouteStatus.TARGET_NOT_IN_ROOM)
        return Route(RouteStatus.OK, (member.channel_name,))

    async def open_connection(self, *, user_id: str, socket_id: str, channel_name: str, limit: int) -> bool:
        connections = self._connections.setdefault(user_id, {})
        if socket_id not in connections and len(connections) >= limit:
            return False
        connections[socket_id] = channel_name
        return True

    async def close_connection(self, *, user_id: str, socket_id: str) -> None:
        connections = self._connections.get(user_id)
        if connections is not None:
            connections.pop(socket_id, None)
            if not connections:
                del self._connections[user_id]

    async def connections_of(self, *, user_id: str) -> tuple[str, ...]:
        return tuple(self._connections.get(user_id, {}).values())

    async def park(self, parking: Parking) -> None:
        socket_id, channel = parking.socket_id, parked_channel(parking.socket_id)
        self._set_channel(socket_id, channel)
        connections = self._connections.setdefault(parking.user_id, {})
        connections[socket_id] = channel
        parked = _Parked(
            parking.user_id,
            parking.epoch,
            parking.offset,
            time.monotonic() + parking.grace_secs,
            parking.capacity,
            sealed=parking.fence is None,  # one process: nothing is in flight
        )
        for message in parking.pending:
            parked.keep(message, late=True)
        self._parked[socket_id] = parked

    def _set_channel(self, socket_id: str, channel: str) -> RoomSession | None:
        key = self._room_of.get(socket_id)
        if key is None:
            return None
        room = self._rooms[key]
        member = room.members[socket_id]
        room.members[socket_id] = Member(member.participant, channel)
        return room.session

    async def buffer(self, *, socket_ids: list[str], message: Buffered) -> None:
        for socket_id in socket_ids:
            parked = self._parked.get(socket_id)
            if parked is not None:
                parked.keep(message, late=False)

    async def buffer_late(self, *, socket_id: str, user_id: str, epoch: int, message: Buffered) -> str | None:
        parked = self._parked.get(socket_id)
        if parked is not None and parked.epoch == epoch:
            parked.keep(message, late=True)
            return None
        return None if socket_id in self._parked else self._connections.get(user_id, {}).get(socket_id)

    async def seal(self, *, socket_id: str, epoch: int) -> None:
        parked = self._parked.get(socket_id)
        if parked is not None and parked.epoch == epoch:
            parked.sealed = True

    async def resume(
        self, *, socket_id: str, user_id: str, epoch: int | None, channel_name: str, force: bool
    ) -> Resumption:
        parked = self._parked.get(socket_id)
        if parked is None:
            live = self._connections.get(user_id, {}).get(socket_id)
            return Resumption(ResumeStatus.LIVE, channel=live) if live else Resumption(ResumeStatus.UNKNOWN)
        if parked.user_id != user_id:
            return Resumption(ResumeStatus.FOREIGN)
        if epoch is not None and epoch != parked.epoch:
            return Resumption(ResumeStatus.USED)
        if not parked.sealed and not force:
            return Resumption(ResumeStatus.UNSEALED)
        del self._parked[socket_id]
        session = self._set_channel(socket_id, channel_name)
        self._connections.setdefault(user_id, {})[socket_id] = channel_name
        participant = None
        if session is not None:
            participant = self._rooms[session.key].members[socket_id].participant
        return Resumption(
            ResumeStatus.RESUMED,
            session,
            participant,
            parked.epoch,
            parked.offset,
            (*parked.early, *parked.later),
            parked.dropped,
        )

    async def expire_parked(self) -> list[Expired]:
        now = time.monotonic()
        expired: list[Expired] = []
        for socket_id, parked in list(self._parked.items()):
            if parked.deadline > now:
                continue
            del self._parked[socket_id]
            await self.close_connection(user_id=parked.user_id, socket_id=socket_id)
            key = self._room_of.get(socket_id)
            departure = self._remove(key, socket_id) if key is not None else None
            expired.append(Expired(socket_id, parked.user_id, parked.dropped, departure))
        return expired

    async def parked_count(self) -> int:
        return len(self._parked)
