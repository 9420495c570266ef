"""Presence: the live state of call rooms, behind one interface (``base.Presence``).

The implementation is chosen by settings, like Channels' layers: in-process by default,
Redis when ``REDIS_URL`` is set.
"""

from __future__ import annotations

from django.conf import settings
from django.utils.module_loading import import_string

from calls.presence.base import Presence

_presence: Presence | None = None


def get_presence() -> Presence:
    """The process-wide presence store, built on first use from ``CALLS_PRESENCE_BACKEND``."""
    global _presence
    if _presence is None:
        _presence = import_string(settings.CALLS_PRESENCE_BACKEND).from_settings(settings)
    return _presence


def reset_presence() -> None:
    """Forget the store (tests start each case from empty rooms)."""
    global _presence
    _presence = None
