"""Single-use websocket tickets (docs/protocol.md §2 and §11).

``POST /api/auth/ws-ticket/`` trades the caller's credential for a ticket that a
websocket presents as ``?ticket=T``, so that the access token stays out of URLs (proxy
logs, browser consoles). A ticket is 256 random bits, valid once, for
``CALLS_WS_TICKET_TTL_SECS``, on any process, and remembers its user and when the
credential that obtained it expires: the connection's authentication lasts exactly as
long as that credential would have (§2).

With ``REDIS_URL`` set, a ticket is a Redis key that expires with the ticket and is read
and deleted in one atomic ``GETDEL``, so two processes cannot both accept it; else the
tickets live in this process's memory, at most ``MAX_MEMORY_TICKETS`` of them (past
that, the oldest goes). Both stores keep a digest of the ticket rather than the ticket.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from django.conf import settings

TICKET_BYTES = 32  # 256 random bits
MAX_MEMORY_TICKETS = 100_000
REDIS_PREFIX = "calls:wsticket:"


@dataclass(frozen=True, slots=True)
class Ticket:
    user_id: str  # the primary key of the user who obtained it
    auth_expires_at: float | None  # Unix time the obtaining credential expires; None: never


class TicketStore(Protocol):
    def issue(self, ticket: Ticket, ttl_secs: int) -> str:
        """Store ``ticket`` for ``ttl_secs`` and return its value for the client."""
        ...

    async def aredeem(self, value: str) -> Ticket | None:
        """The ticket ``value`` names, removed; ``None`` if unknown, used or expired."""
        ...


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class MemoryTickets:
    """Tickets in this process (monotonic clock), oldest first; a lock makes issue (in a
    view's thread) and redeem (on the loop) atomic."""

    def __init__(self, max_tickets: int = MAX_MEMORY_TICKETS) -> None:
        self.max_tickets = max_tickets
        self._tickets: OrderedDict[str, tuple[float, Ticket]] = OrderedDict()  # digest -> (deadline, ticket)
        self._lock = threading.Lock()

    def issue(self, ticket: Ticket, ttl_secs: int) -> str:
        value = secrets.token_urlsafe(TICKET_BYTES)
        now = time.monotonic()
        with self._lock:
            while self._tickets and (
                len(self._tickets) >= self.max_tickets or next(iter(self._tickets.values()))[0] <= now
            ):
                self._tickets.popitem(last=False)
            self._tickets[_digest(value)] = (now + ttl_secs, ticket)
        return value

    def redeem(self, value: str) -> Ticket | None:
        with self._lock:
            entry = self._tickets.pop(_digest(value), None)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    async def aredeem(self, value: str) -> Ticket | None:
        return self.redeem(value)

    def __len__(self) -> int:
        return len(self._tickets)


class RedisTickets:
    """Tickets in Redis, shared by every process: ``SET … PX`` to issue (from a view's
    thread, with a blocking client), ``GETDEL`` to redeem (on the loop, asyncio client)."""

    def __init__(self, url: str) -> None:
        import redis
        import redis.asyncio as aioredis

        self.redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.aredis = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def issue(self, ticket: Ticket, ttl_secs: int) -> str:
        value = secrets.token_urlsafe(TICKET_BYTES)
        stored = json.dumps({"user": ticket.user_id, "authExpiresAt": ticket.auth_expires_at})
        self.redis.set(REDIS_PREFIX + _digest(value), stored, px=ttl_secs * 1000)
        return value

    async def aredeem(self, value: str) -> Ticket | None:
        stored = await self.aredis.getdel(REDIS_PREFIX + _digest(value))
        if stored is None:
            return None
        fields = json.loads(stored)
        expires_at = fields.get("authExpiresAt")
        return Ticket(str(fields["user"]), float(expires_at) if expires_at is not None else None)


_store: MemoryTickets | RedisTickets | None = None


def get_ticket_store() -> MemoryTickets | RedisTickets:
    """This process's ticket store: Redis when ``REDIS_URL`` is set, else memory."""
    global _store
    if _store is None:
        _store = RedisTickets(settings.REDIS_URL) if settings.REDIS_URL else MemoryTickets()
    return _store


def reset_ticket_store() -> None:
    """Forget the store (its next use builds it from the settings; tests call this)."""
    global _store
    _store = None
