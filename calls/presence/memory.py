"""Presence held in this process: for a single-process deployment and for tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from calls.presence.base import (
    Departure,
    Forward,
    JoinOutcome,
    JoinStatus,
    Member,
    Presence,
    RoomSession,
    Route,
    RouteStatus,
)


@dataclass(slots=True)
class _Room:
    session: RoomSession
    members: dict[str, Member] = field(default_factory=dict)  # insertion order = join order


class InMemoryPresence(Presence):
    """Dicts guarded by the event loop: no method awaits, so each one is atomic."""

    def __init__(self) -> None:
        self._rooms: dict[str, _Room] = {}
        self._room_of: dict[str, str] = {}  # socketId -> room key
        self._connections: dict[str, dict[str, str]] = {}  # userId -> socketId -> channel

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
