"""Presence: the live state of call rooms, behind one interface (``base.Presence``).

The implementation is chosen by settings, like Channels' layers: in-process by default,
Redis when ``REDIS_URL`` is set. The process's store belongs to its state
(``calls.process``).
"""

from __future__ import annotations

from calls.presence.base import Presence


def get_presence() -> Presence:
    """This process's presence store, built on first use from ``CALLS_PRESENCE_BACKEND``."""
    from calls import process

    return process.current().presence
