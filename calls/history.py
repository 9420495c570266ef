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
from django.contrib.auth import get_user_model
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F, QuerySet
from django.db.models.functions import Greatest
from django.utils import timezone

from calls import signals
from calls.models import CallParticipant, CallRing, CallRoom, ModerationAction
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
    # The writes that name their session by id (rings, moderation, media, call ends).
    for key, label in (("session_id", "session"), ("ring_id", "ringId"), ("socket_id", "socketId")):
        if session is None and kwargs.get(key):
            parts.append(f"{label}={kwargs[key]}")
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
    _joined(session, participant, member_count)


def _joined(session: RoomSession, participant: Participant, member_count: int) -> None:
    """Create the participation row (and its session's, if it is the first), raise the
    session's peak to ``member_count`` and tell ``participant_joined``. A row there
    already was written by the participant's departure, recorded by another process (a
    kick, say) before this join's batch: it stays as it is."""
    call = _session_row(session)
    row, created = CallParticipant.objects.get_or_create(
        call=call,
        socket_id=participant.socket_id,
        defaults={"user_id": int(participant.user_id), "joined_at": _parse_time(participant.joined_at)},
    )
    CallRoom.objects.filter(pk=call.pk).update(peak_participants=Greatest(F("peak_participants"), member_count))
    if created:
        signals.send_on_commit(signals.participant_joined, CallParticipant, participant=row)


def record_leave(*, departure: Departure, reason: LeaveReason, counts: RelayCounts) -> None:
    now = timezone.now()
    session_id = departure.session.session_id
    participant = departure.participant
    if not CallParticipant.objects.filter(call__session_id=session_id, socket_id=participant.socket_id).exists():
        # A process killed between a join and its batch never wrote it: the process that
        # reaps the participant writes it from presence, so the audit still shows who was
        # in the call, and when.
        _joined(departure.session, participant, len(departure.remaining) + 1)
    leaving = CallParticipant.objects.filter(
        call__session_id=session_id, socket_id=participant.socket_id, left_at__isnull=True
    )
    _left(leaving, left_at=now, leave_reason=reason.value)
    CallRoom.objects.filter(session_id=session_id).update(**_relay_updates(counts))
    if departure.room_emptied:
        _ended(CallRoom.objects.filter(session_id=session_id, ended_at__isnull=True), ended_at=now)


def _left(participants: QuerySet[CallParticipant], **update: Any) -> None:
    """Close these participations, each telling ``participant_left`` once."""
    for row in participants.select_for_update():
        if CallParticipant.objects.filter(pk=row.pk, left_at__isnull=True).update(**update):
            row.refresh_from_db()
            signals.send_on_commit(signals.participant_left, CallParticipant, participant=row)


def _ended(calls: QuerySet[CallRoom], **update: Any) -> int:
    """End these sessions, each telling ``call_ended`` once; returns how many."""
    ended = 0
    for call in calls.select_for_update():
        if CallRoom.objects.filter(pk=call.pk, ended_at__isnull=True).update(**update):
            call.refresh_from_db()
            signals.send_on_commit(signals.call_ended, CallRoom, call=call)
            ended += 1
    return ended


def record_relays(*, session_id: str, counts: RelayCounts) -> None:
    """Add a participant's relays so far to its session (it was parked: whichever
    process resumes it counts from there)."""
    CallRoom.objects.filter(session_id=session_id).update(**_relay_updates(counts))


def record_resume(*, session_id: str, socket_id: str) -> None:
    CallParticipant.objects.filter(call__session_id=session_id, socket_id=socket_id).update(resumes=F("resumes") + 1)


def record_ring(
    *,
    session_id: str,
    ring_id: str,
    ringer_user_id: str,
    callee_user_ids: list[str],
    started_at: str,
    expires_at: str,
) -> None:
    """Record a ``webrtc:ring`` (docs/protocol.md §9): one row per callee, ringing until
    ``record_ring_outcome``. Nothing for a session without a row; a callee deleted
    meanwhile gets no row, a ringer deleted meanwhile leaves ``ringer`` empty; a callee
    already recorded for this ring keeps its row."""
    call_id = CallRoom.objects.filter(session_id=session_id).values_list("pk", flat=True).first()
    if call_id is None:
        return
    callees = _existing_users(callee_user_ids)
    if not callees:
        return
    ringer = _existing_users([ringer_user_id])
    start, expiry = _parse_utc(started_at), _parse_utc(expires_at)
    CallRing.objects.bulk_create(
        [
            CallRing(
                call_id=call_id,
                ring_id=ring_id,
                ringer_id=ringer[0] if ringer else None,
                callee_id=callee,
                started_at=start,
                expires_at=expiry,
            )
            for callee in callees
        ],
        ignore_conflicts=True,  # (ring_id, callee) recorded already
    )


def record_ring_outcome(*, ring_id: str, callee_user_id: str, outcome: str, at: str) -> None:
    """End one callee's ring with ``outcome`` (a ``CallRing.Outcome`` value) at ``at``.
    Only a ring still without an outcome changes: the first outcome written stays.
    Nothing for an unknown ring or callee; ``ValueError`` for an unknown outcome."""
    outcome = CallRing.Outcome(outcome).value
    callee = _user_pk(callee_user_id)
    if callee is None:
        return
    updated = CallRing.objects.filter(ring_id=ring_id, callee_id=callee, outcome="").update(
        outcome=outcome, ended_at=_parse_utc(at)
    )
    if updated and outcome == CallRing.Outcome.MISSED:
        for ring in CallRing.objects.filter(ring_id=ring_id, callee_id=callee):
            signals.send_on_commit(signals.ring_missed, CallRing, ring=ring)


def record_moderation(
    *,
    session_id: str,
    actor_user_id: str,
    action: str,
    at: str,
    target_user_id: str | None = None,
    target_socket_id: str = "",
    banned_until: str | None = None,
) -> None:
    """Record a moderator's ``action`` (a ``ModerationAction.Action`` value) in a session
    (docs/protocol.md §10). Nothing for a session without a row; users deleted meanwhile
    are left empty; ``ValueError`` for an unknown action."""
    action = ModerationAction.Action(action).value
    call_id = CallRoom.objects.filter(session_id=session_id).values_list("pk", flat=True).first()
    if call_id is None:
        return
    actor = _existing_users([actor_user_id])
    target = _existing_users([target_user_id]) if target_user_id else []
    ModerationAction.objects.create(
        call_id=call_id,
        actor_id=actor[0] if actor else None,
        action=action,
        target_user_id=target[0] if target else None,
        target_socket_id=target_socket_id,
        banned_until=_parse_utc(banned_until) if banned_until else None,
        at=_parse_utc(at),
    )


def record_media_change(*, session_id: str, socket_id: str) -> None:
    """Count one ``webrtc:media-state`` of a participant (docs/protocol.md §5 rule 11)."""
    CallParticipant.objects.filter(call__session_id=session_id, socket_id=socket_id).update(
        media_changes=F("media_changes") + 1
    )


def record_call_ended(*, session_id: str, ended_by_user_id: str, at: str) -> None:
    """Record a ``webrtc:end-call`` (docs/protocol.md §10): the session ends at ``at``,
    ended by that user, and whoever was still in it leaves as ``call-ended``; its rings
    still ringing end with ``call-ended`` too. A session already ended keeps its end
    (and gets its ``ended_by`` if it had none). Nothing for a session without a row."""
    call_id = CallRoom.objects.filter(session_id=session_id).values_list("pk", flat=True).first()
    if call_id is None:
        return
    when = _parse_utc(at)
    ended_by = _existing_users([ended_by_user_id])
    ender = ended_by[0] if ended_by else None
    if ender is not None:
        CallRoom.objects.filter(pk=call_id, ended_by__isnull=True).update(ended_by_id=ender)
    _left(
        CallParticipant.objects.filter(call_id=call_id, left_at__isnull=True),
        left_at=when,
        leave_reason=CallParticipant.LeaveReason.CALL_ENDED.value,
    )
    _ended(CallRoom.objects.filter(pk=call_id, ended_at__isnull=True), ended_at=when)
    CallRing.objects.filter(call_id=call_id, outcome="").update(
        outcome=CallRing.Outcome.CALL_ENDED.value, ended_at=when
    )


def _parse_utc(value: str) -> dt.datetime:
    """An ISO 8601 time; one without an offset is taken as UTC."""
    parsed = _parse_time(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _user_pk(user_id: str) -> int | None:
    """The pk a protocol userId names (the decimal string of a pk), or None."""
    return int(user_id) if user_id.isascii() and user_id.isdecimal() else None


def _existing_users(user_ids: list[str]) -> list[int]:
    """The pks of those of ``user_ids`` whose users exist, in their order, once each: a
    user deleted while a write waited is left out rather than fail the write (a
    deletion racing the write itself still fails it, in its own savepoint)."""
    pks = list(dict.fromkeys(pk for pk in map(_user_pk, user_ids) if pk is not None))
    found = set(get_user_model().objects.filter(pk__in=pks).values_list("pk", flat=True))
    return [pk for pk in pks if pk in found]


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
    call, created = CallRoom.objects.get_or_create(
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
    if created:
        signals.send_on_commit(signals.call_started, CallRoom, call=call)
    return call


def _close_sessions(calls: QuerySet[CallRoom]) -> int:
    now = timezone.now()
    ids = list(calls.values_list("pk", flat=True))
    _left(
        CallParticipant.objects.filter(call_id__in=ids, left_at__isnull=True),
        left_at=now,
        leave_reason=LeaveReason.LOST.value,
    )
    return _ended(CallRoom.objects.filter(pk__in=ids, ended_at__isnull=True), ended_at=now)


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
