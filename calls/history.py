"""Call history writes, run off the event loop in batches.

Nothing here is on the relay path; relays are counted in memory by the connection and
flushed with its departure. Joins and leaves hand their writes to the process's
``HistoryWriter`` and go on: the database was most of a join's CPU and latency, and a
batch pays one thread hop and one commit for everything queued meanwhile.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F, QuerySet
from django.db.models.functions import Greatest
from django.utils import timezone

from calls.models import CallParticipant, CallRoom
from calls.presence.base import Departure, Participant, RoomSession, room_key
from calls.protocol import Event, LeaveReason

logger = logging.getLogger("calls")


class HistoryWriter:
    """Applies history writes in order, in batches: everything queued while one batch is
    written goes in the next, in one transaction (each write in its own savepoint, so
    one failure loses only itself). Nothing waits when idle: a lone write starts at once.
    """

    def __init__(self) -> None:
        self._queue: list[tuple[Callable[..., Any], dict[str, Any]]] = []
        self._task: asyncio.Task | None = None  # runs until the queue is empty

    def submit(self, write: Callable[..., Any], **kwargs: Any) -> None:
        self._queue.append((write, kwargs))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def pending(self) -> int:
        return len(self._queue)

    def full(self) -> bool:
        """Whether ``CALLS_HISTORY_QUEUE_LIMIT`` writes wait: joins are refused then."""
        return len(self._queue) >= settings.CALLS_HISTORY_QUEUE_LIMIT

    async def drained(self) -> None:
        """Return once every write submitted so far is in the database."""
        if self._task is not None:
            await asyncio.wait({self._task})

    async def _run(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            await database_sync_to_async(_apply)(batch)


Batch = list[tuple[Callable[..., Any], dict[str, Any]]]


def _described(write: Callable[..., Any], kwargs: dict[str, Any]) -> str:
    """What a write would have recorded, for the log line that says it was lost."""
    parts = [write.__name__]
    session, participant = kwargs.get("session"), kwargs.get("participant")
    if "departure" in kwargs:
        session, participant = kwargs["departure"].session, kwargs["departure"].participant
    if session is not None:
        parts.append(f"room={session.room_id} session={session.session_id}")
    if participant is not None:
        parts.append(f"socketId={participant.socket_id} userId={participant.user_id}")
    return " ".join(parts)


def _apply(batch: Batch) -> None:
    """Write ``batch``; whatever fails is logged, and the writer goes on."""
    try:
        _apply_in_one_transaction(batch)
    except IntegrityError:
        # A foreign key checked only at COMMIT failed it, and with it the whole batch:
        # SQLite cannot check its DEFERRABLE INITIALLY DEFERRED keys any earlier (say,
        # a user deleted while their join was queued). Again, one transaction per write,
        # so that the failure loses only its own write.
        if len(batch) == 1:
            logger.exception("could not record call history: lost %s", _described(*batch[0]))
            return
        logger.warning("a batch of %d call history writes failed at COMMIT: writing them one by one", len(batch))
        for write, kwargs in batch:
            try:
                _apply_in_one_transaction([(write, kwargs)])
            except DatabaseError:
                logger.exception("could not record call history: lost %s", _described(write, kwargs))
    except DatabaseError:  # the database is unreachable, say
        logger.exception(
            "could not record %d call history writes: lost %s", len(batch), "; ".join(_described(*w) for w in batch)
        )


@transaction.atomic
def _apply_in_one_transaction(batch: Batch) -> None:
    if connection.vendor == "postgresql":
        # Django's foreign keys are DEFERRABLE INITIALLY DEFERRED, so a write naming a
        # user or group deleted meanwhile would fail only the COMMIT, losing every write
        # of the batch. Checked at each statement instead, the failure stays within its
        # savepoint, and the rows it found are locked against deletion until the COMMIT
        # (which checking existence first would not do).
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    for write, kwargs in batch:
        try:
            with transaction.atomic():
                write(**kwargs)
        except Exception:
            # Signaling goes on: a call must not break because its record was not kept.
            logger.exception("could not record call history: lost %s", _described(write, kwargs))


def writer() -> HistoryWriter:
    """This process's writer (``calls.process``)."""
    from calls import process

    return process.current().writer


@dataclass(slots=True)
class RelayCounts:
    """Messages one connection relayed in its current room."""

    offers: int = 0
    answers: int = 0
    candidates: int = 0

    def add(self, event: str) -> None:
        if event == Event.OFFER:
            self.offers += 1
        elif event == Event.ANSWER:
            self.answers += 1
        else:
            self.candidates += 1

    def reset(self) -> RelayCounts:
        """Return the counts so far and start again from zero."""
        taken = RelayCounts(self.offers, self.answers, self.candidates)
        self.offers = self.answers = self.candidates = 0
        return taken


def _parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


# The writes below run through the writer, which applies each in its own savepoint.


def record_join(
    *,
    session: RoomSession,
    participant: Participant,
    member_count: int,
    previous: Departure | None = None,
    previous_counts: RelayCounts | None = None,
) -> None:
    """Record a join (and the departure from the previous room of a switch)."""
    if previous is not None:
        record_leave(departure=previous, reason=LeaveReason.SWITCHED_ROOM, counts=previous_counts or RelayCounts())
    call = _session_row(session)
    CallParticipant.objects.create(
        call=call,
        user_id=int(participant.user_id),
        socket_id=participant.socket_id,
        joined_at=_parse_time(participant.joined_at),
    )
    CallRoom.objects.filter(pk=call.pk).update(peak_participants=Greatest(F("peak_participants"), member_count))


def record_leave(*, departure: Departure, reason: LeaveReason, counts: RelayCounts) -> None:
    now = timezone.now()
    session_id = departure.session.session_id
    CallParticipant.objects.filter(call__session_id=session_id, socket_id=departure.participant.socket_id).update(
        left_at=now, leave_reason=reason.value
    )
    CallRoom.objects.filter(session_id=session_id).update(**_relay_updates(counts))
    if departure.room_emptied:
        CallRoom.objects.filter(session_id=session_id, ended_at__isnull=True).update(ended_at=now)


def record_relays(*, session_id: str, counts: RelayCounts) -> None:
    """Add a participant's relays so far to its session (it was parked: whichever
    process resumes it counts from there)."""
    CallRoom.objects.filter(session_id=session_id).update(**_relay_updates(counts))


def record_resume(*, session_id: str, socket_id: str) -> None:
    CallParticipant.objects.filter(call__session_id=session_id, socket_id=socket_id).update(resumes=F("resumes") + 1)


def _relay_updates(counts: RelayCounts) -> dict[str, Any]:
    return {
        "offers_relayed": F("offers_relayed") + counts.offers,
        "answers_relayed": F("answers_relayed") + counts.answers,
        "candidates_relayed": F("candidates_relayed") + counts.candidates,
    }


def _session_row(session: RoomSession) -> CallRoom:
    """The row of a live session, created by whichever of its first joiners gets here
    first (they all carry the same session record)."""
    call = CallRoom.objects.filter(session_id=session.session_id).first()
    if call is not None:
        return call
    # Presence says this session is the room's only live one, so any other row still
    # open for the room id is a leftover whose end was not yet (or never) written. Not
    # this session's own: on PostgreSQL, another process's first joiner may have
    # committed it since the read above (SQLite's write lock left no such gap).
    group_id = int(session.group_id) if session.group_id else None
    leftovers = CallRoom.objects.filter(room_id=session.room_id, group__isnull=group_id is None, ended_at__isnull=True)
    if group_id is not None:
        leftovers = leftovers.filter(group_id=group_id)
    _close_sessions(leftovers.exclude(session_id=session.session_id))
    metadata = session.metadata
    call, _ = CallRoom.objects.get_or_create(
        session_id=session.session_id,
        defaults={
            "room_id": session.room_id,
            "call_type": metadata["callType"],
            "group_id": group_id,
            "created_by_id": int(metadata["createdBy"]),
            "metadata": metadata,
            "started_at": _parse_time(metadata["createdAt"]),
        },
    )
    return call


def _close_sessions(calls: QuerySet[CallRoom]) -> int:
    now = timezone.now()
    ids = list(calls.values_list("pk", flat=True))
    CallParticipant.objects.filter(call_id__in=ids, left_at__isnull=True).update(
        left_at=now, leave_reason=LeaveReason.LOST.value
    )
    return CallRoom.objects.filter(pk__in=ids).update(ended_at=now)


def open_sessions() -> list[tuple[str, str]]:
    """``(room key, session_id)`` of every session the database still shows as live."""
    rows = CallRoom.objects.filter(ended_at__isnull=True).values_list("room_id", "group_id", "session_id")
    return [(room_key(room_id, None if group_id is None else str(group_id)), sid) for room_id, group_id, sid in rows]


@transaction.atomic
def close_orphaned_sessions(*, keep: Collection[str] = ()) -> int:
    """End every session still open in the database except those in ``keep`` (session
    ids that presence shows live); their participants leave as ``lost``. Run when a
    server process starts, so that the audit never shows ghosts of a previous run.
    Returns how many sessions were closed."""
    return _close_sessions(CallRoom.objects.filter(ended_at__isnull=True).exclude(session_id__in=list(keep)))
