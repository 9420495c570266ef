"""Django signals a host project connects to (docs/integration.md): "Call started" in the
group's chat, a missed-call notification.

Each is sent once, by the one process whose history write made it true, after that write
is committed (the row exists when a receiver reads it), from that process's history
writer thread. A receiver that raises is logged and does not stop the others or the
call's history.

- ``call_started(call)``: a call session's first join (``CallRoom``).
- ``call_ended(call)``: the session ended: its last participant left, a moderator
  ended it (``call.ended_by``), or a start found it left open by a process that died.
- ``participant_joined(participant)`` and ``participant_left(participant)``
  (``CallParticipant``; ``participant.leave_reason`` says why).
- ``ring_missed(ring)``: a callee's ring timed out (``CallRing``).
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.dispatch import Signal

logger = logging.getLogger("calls")

call_started = Signal()
call_ended = Signal()
participant_joined = Signal()
participant_left = Signal()
ring_missed = Signal()


def send_on_commit(signal: Signal, sender: type, **kwargs: Any) -> None:
    """Send ``signal`` once the current transaction commits (at once outside one)."""

    def send() -> None:
        for receiver, outcome in signal.send_robust(sender, **kwargs):
            if isinstance(outcome, Exception):
                logger.error("a receiver of a calls signal failed: %r", receiver, exc_info=outcome)

    transaction.on_commit(send)
