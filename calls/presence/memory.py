"""Presence held in this process: for a single-process deployment and for tests."""

from __future__ import annotations

import dataclasses
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
    Participant,
    Presence,
    ResumeStatus,
    Resumption,
    RingEnd,
    RingRecord,
    RoomSession,
    Route,
    RouteStatus,
    parked_channel,
)


@dataclass(slots=True)
class _Room:
    session: RoomSession
    members: dict[str, Member] = field(default_factory=dict)  # insertion order = join order
    locked: bool = False


@dataclass(slots=True)
class _Ring:
    record: RingRecord
    ringing: set[str]  # callees whose ring has not ended


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
        self._bans: dict[tuple[str, str], int] = {}  # (room key, userId) -> until (ms)
        self._rings: dict[str, _Ring] = {}
        self._rung: dict[tuple[str, str], str] = {}  # (room key, userId) -> ringId, while ringing

    async def join(
        self,
        *,
        new_session: RoomSession,
        member: Member,
        capacity: int,
        group_ids: frozenset[str],
        moderator: bool = False,
    ) -> JoinOutcome:
        room_key = new_session.key
        participant = member.participant
        socket_id = participant.socket_id
        if new_session.group_id is not None and new_session.group_id not in group_ids:
            return JoinOutcome(JoinStatus.FORBIDDEN)
        room = self._rooms.get(room_key)
        if room is not None and socket_id in room.members:
            return JoinOutcome(
                JoinStatus.ALREADY_IN_ROOM, room.session, tuple(room.members.values()), locked=room.locked
            )
        banned_until = self._bans.get((room_key, participant.user_id))
        if banned_until is not None and banned_until > time.time() * 1000:
            return JoinOutcome(JoinStatus.BANNED, banned_until_ms=banned_until)
        if room is not None:
            creator = room.session.group_id is None and room.session.metadata.get("createdBy") == participant.user_id
            if room.locked and not moderator and not creator:
                return JoinOutcome(JoinStatus.LOCKED)
            if len(room.members) >= capacity:
                return JoinOutcome(JoinStatus.FULL)
        previous_room = self._room_of.get(socket_id)
        previous = self._remove(previous_room, socket_id) if previous_room else None
        status = JoinStatus.JOINED
        if room is None:
            room = self._rooms[room_key] = _Room(new_session)
            status = JoinStatus.CREATED
        if participant.video is None:
            video = room.session.metadata.get("callType") == "video"
            member = Member(dataclasses.replace(participant, video=video), member.channel_name)
        room.members[socket_id] = member
        self._room_of[socket_id] = room_key
        return JoinOutcome(status, room.session, tuple(room.members.values()), previous, locked=room.locked)

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

    async def buffer(self, *, socket_ids: list[str], message: Buffered) -> list[str]:
        resumed = []
        for socket_id in socket_ids:
            parked = self._parked.get(socket_id)
            if parked is not None:
                parked.keep(message, late=False)
                continue
            key = self._room_of.get(socket_id)
            if key is not None:  # resumed since it was routed to (else it has left)
                resumed.append(self._rooms[key].members[socket_id].channel_name)
        return resumed

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

    async def update_media(
        self, *, room_key: str, socket_id: str, audio: bool, video: bool, screen: bool
    ) -> tuple[Participant, tuple[Member, ...]] | None:
        room = self._rooms.get(room_key)
        member = room.members.get(socket_id) if room is not None else None
        if room is None or member is None:
            return None
        participant = dataclasses.replace(member.participant, audio=audio, video=video, screen=screen)
        room.members[socket_id] = Member(participant, member.channel_name)
        return participant, tuple(room.members.values())

    async def set_locked(self, *, room_key: str, locked: bool) -> tuple[Member, ...]:
        room = self._rooms.get(room_key)
        if room is None:
            return ()
        room.locked = locked
        return tuple(room.members.values())

    async def ban(self, *, room_key: str, user_id: str, until_ms: int) -> None:
        now = time.time() * 1000
        self._bans = {key: until for key, until in self._bans.items() if until > now}  # expire old ones
        self._bans[(room_key, user_id)] = until_ms

    async def end_room(self, *, room_key: str) -> tuple[RoomSession, tuple[Member, ...]] | None:
        room = self._rooms.pop(room_key, None)
        if room is None:
            return None
        for socket_id in room.members:
            self._room_of.pop(socket_id, None)
        return room.session, tuple(room.members.values())

    async def start_ring(self, ring: RingRecord, user_ids: list[str]) -> list[str]:
        rung = [u for u in dict.fromkeys(user_ids) if (ring.room_key, u) not in self._rung]
        if rung:
            self._rings[ring.ring_id] = _Ring(ring, set(rung))
            for user_id in rung:
                self._rung[(ring.room_key, user_id)] = ring.ring_id
        return rung

    async def end_rings(
        self,
        *,
        outcome: str,
        ring_id: str | None = None,
        room_key: str | None = None,
        user_id: str | None = None,
        ringer_user_id: str | None = None,
    ) -> list[RingEnd]:
        if ring_id is not None:
            ring = self._rings.get(ring_id)
            if ring is None or (ringer_user_id is not None and ring.record.ringer.user_id != ringer_user_id):
                return []
            callees = [user_id] if user_id is not None else sorted(ring.ringing)
            return [end for u in callees if (end := self._end(ring, u, outcome))]
        ends = []
        for (key, callee), rung_id in list(self._rung.items()):
            if (
                key == room_key
                and user_id in (None, callee)
                and (end := self._end(self._rings[rung_id], callee, outcome))
            ):
                ends.append(end)
        return ends

    def _end(self, ring: _Ring, user_id: str, outcome: str) -> RingEnd | None:
        if user_id not in ring.ringing:
            return None
        ring.ringing.discard(user_id)
        self._rung.pop((ring.record.room_key, user_id), None)
        if not ring.ringing:
            del self._rings[ring.record.ring_id]
        return RingEnd(ring.record, user_id, outcome)

    async def expire_rings(self) -> list[RingEnd]:
        now = time.time() * 1000
        ends: list[RingEnd] = []
        for ring in [r for r in self._rings.values() if r.record.expires_at_ms <= now]:
            ends += [end for u in sorted(ring.ringing) if (end := self._end(ring, u, "missed"))]
        return ends

    async def rings_of(self, *, user_id: str) -> list[RingRecord]:
        return [ring.record for ring in self._rings.values() if user_id in ring.ringing]

    async def locked(self, *, room_key: str) -> bool:
        room = self._rooms.get(room_key)
        return room is not None and room.locked
