"""Liveness of server processes sharing presence (docs/protocol.md §5 rule 4, last clause).

Every process renews its lease every ``heartbeat_interval_secs`` (a sixth of
``CALLS_PRESENCE_TTL_SECS``, at most a second) and looks for peers whose lease expired.
The lease lasts half the TTL, so a dead process's participants leave within
``TTL/2`` (lease runs out) ``+ one interval`` (next look) ``< TTL``, while a live process
can miss two beats in a row without being declared dead. The one-second cap bounds how
long a Redis that lost its data goes without the members every process puts back.
"""

from __future__ import annotations

import asyncio
import logging

from django.conf import settings

from calls import delivery, services
from calls.presence import get_presence
from calls.presence.base import PresenceEvicted, PresenceUnavailable
from calls.protocol import CloseCode

logger = logging.getLogger("calls")

HEARTBEATS_PER_TTL = 6
MAX_HEARTBEAT_INTERVAL_SECS = 1.0
LEASE_FRACTION_OF_TTL = 0.5


def heartbeat_interval_secs() -> float:
    return min(settings.CALLS_PRESENCE_TTL_SECS / HEARTBEATS_PER_TTL, MAX_HEARTBEAT_INTERVAL_SECS)


def lease_secs() -> float:
    return settings.CALLS_PRESENCE_TTL_SECS * LEASE_FRACTION_OF_TTL


async def liveness_tick() -> None:
    """One beat: renew the lease, then remove the participants of dead peers."""
    try:
        presence = get_presence()
        await presence.heartbeat()
        for departure in await presence.reap():
            await services.participant_lost(departure)
    except PresenceEvicted as evicted:
        logger.error("this process was declared dead by its peers; closing %d connections", len(evicted.channels))
        await delivery.close(evicted.channels, CloseCode.GOING_AWAY)
    except PresenceUnavailable as exc:
        logger.warning("presence unavailable, will retry: %s", exc)
    except Exception:
        logger.exception("liveness check failed")


async def liveness_loop() -> None:
    """Beat until the process ends."""
    while True:
        await asyncio.sleep(heartbeat_interval_secs())
        await liveness_tick()
