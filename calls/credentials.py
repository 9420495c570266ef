"""Credentials that end while their connections are open (docs/protocol.md §2).

A token is checked at the handshake, but a connection lives longer than that: its token
expires, its user is deactivated or deleted, or removed from the group whose call it is
in. Each process checks its own connections once a second: those whose credential has
expired, or whose user is gone or inactive, are closed with 4401; those in a room of a
group their user has left leave it (``removed``).

A sweep rather than model signals: deactivation and group changes happen in whatever
process runs the admin, a management command, or plain SQL, and every process must act
on its own connections; two indexed queries a second cost a process less than one relay
in a thousand. They run on the handshake's lookup threads, never behind history writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Iterable

from django.contrib.auth import get_user_model

from calls import delivery, host, services
from calls.protocol import CloseCode

logger = logging.getLogger("calls")

SWEEP_INTERVAL_SECS = 1.0  # deactivations and removals take effect within about this
IDS_PER_QUERY = 2000  # below every database's limit on query parameters


def _chunks(ids: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), IDS_PER_QUERY):
        yield ids[start : start + IDS_PER_QUERY]


def _still_valid(
    user_ids: Collection[str], in_groups: Collection[tuple[str, str]]
) -> tuple[set[str], set[tuple[str, str]]]:
    """Of these users, the active ones; of these (user, group) pairs, the memberships."""
    users = get_user_model()._default_manager
    active: set[str] = set()
    for chunk in _chunks(sorted(user_ids)):
        active |= {str(pk) for pk in users.filter(pk__in=chunk, is_active=True).values_list("pk", flat=True)}
    return active, set(host.roles_among(in_groups))


async def sweep(now: float | None = None) -> None:
    """One pass over this process's connections (``now``: a Unix time, for tests)."""
    callers = services.open_connections()
    if not callers:
        return
    in_groups = {(c.user_id, c.group_id) for c in callers if c.group_id is not None}
    active, memberships = await host.in_lookup_thread(_still_valid)({c.user_id for c in callers}, in_groups)
    now = time.time() if now is None else now
    revoked = []
    for caller in callers:
        expired = caller.auth_expires_at is not None and caller.auth_expires_at <= now
        if expired or caller.user_id not in active:
            logger.info(
                "closing: %s %s", "authentication expired" if expired else "user inactive", caller.log_context()
            )
            revoked.append(caller.channel_name)
        elif (pair := (caller.user_id, caller.group_id)) in in_groups and pair not in memberships:
            # Only a room asked about: one joined during the query is not a removal.
            await services.remove_from_group_room(caller)
    if revoked:
        await delivery.close(revoked, CloseCode.UNAUTHENTICATED)


async def sweep_loop() -> None:
    """Sweep until the process ends; a failed pass is logged and the next one tried."""
    while True:
        await asyncio.sleep(SWEEP_INTERVAL_SECS)
        try:
            await sweep()
        except Exception:
            logger.exception("credentials sweep failed")
