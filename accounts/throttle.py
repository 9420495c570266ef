"""Throttling of failed websocket authentications per client address (PROTOCOL.md §2).

After ``CALLS_AUTH_FAILURES_PER_MINUTE`` failures from one address within a minute,
every further attempt from it is refused (closed with 4429) until the oldest failure is
a minute old, so that tokens cannot be tried at line rate. Only presented credentials
that fail count: a socket without any credential is no guess.

The count is shared by every process when ``REDIS_URL`` is set, else kept in memory.
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque

from django.conf import settings

WINDOW_SECS = 60.0
MAX_TRACKED_ADDRESSES = 100_000  # memory bound for the in-process store


def client_address(scope: dict) -> str:
    """The websocket client's address (see ``forwarded_client_address``)."""
    peer = (scope.get("client") or ("unknown", 0))[0]
    forwarded = next((value for name, value in scope.get("headers", []) if name == b"x-forwarded-for"), None)
    return forwarded_client_address(peer, forwarded.decode("latin1") if forwarded is not None else None)


def forwarded_client_address(peer: str, forwarded_for: str | None) -> str:
    """The client's address: the direct peer's, or, when the peer is a proxy listed in
    ``CALLS_TRUSTED_PROXIES``, the nearest untrusted hop of ``X-Forwarded-For`` (so a
    client cannot forge its address by sending the header itself)."""
    trusted = settings.CALLS_TRUSTED_PROXIES
    if peer not in trusted or not forwarded_for:
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if hop not in trusted and _is_ip(hop):
            return hop
    return peer


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class MemoryAuthThrottle:
    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}

    async def blocked(self, address: str) -> bool:
        failures = self._failures.get(address)
        if failures is None:
            return False
        self._prune(address, failures, time.monotonic())
        return len(failures) >= settings.CALLS_AUTH_FAILURES_PER_MINUTE

    async def record_failure(self, address: str) -> None:
        if len(self._failures) >= MAX_TRACKED_ADDRESSES:
            now = time.monotonic()
            for known, failures in list(self._failures.items()):
                self._prune(known, failures, now)
        self._failures.setdefault(address, deque()).append(time.monotonic())

    def _prune(self, address: str, failures: deque[float], now: float) -> None:
        while failures and now - failures[0] > WINDOW_SECS:
            failures.popleft()
        if not failures:
            self._failures.pop(address, None)


class RedisAuthThrottle:
    """A sorted set of failure times per address, expiring with the window."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def _key(self, address: str) -> str:
        return f"calls:authfail:{address}"

    async def blocked(self, address: str) -> bool:
        key, now = self._key(address), time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, 0, now - WINDOW_SECS)
            pipe.zcard(key)
            _, count = await pipe.execute()
        return count >= settings.CALLS_AUTH_FAILURES_PER_MINUTE

    async def record_failure(self, address: str) -> None:
        key, now = self._key(address), time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {f"{now:.6f}": now})
            pipe.expire(key, int(WINDOW_SECS) + 1)
            await pipe.execute()


_throttle: MemoryAuthThrottle | RedisAuthThrottle | None = None


def get_throttle() -> MemoryAuthThrottle | RedisAuthThrottle:
    global _throttle
    if _throttle is None:
        _throttle = RedisAuthThrottle(settings.REDIS_URL) if settings.REDIS_URL else MemoryAuthThrottle()
    return _throttle


def reset_throttle() -> None:
    global _throttle
    _throttle = None
