"""Throttling of failed authentications, on sliding windows kept in Redis or in memory.

Two throttles share one store of sliding windows (``SlidingWindows``: the times of the
events of each key within the last window, in this process's memory or, when
``REDIS_URL`` is set, in Redis, so that every process sees the same count):

- **Websocket handshakes** (docs/protocol.md §2). After ``CALLS_AUTH_FAILURES_PER_MINUTE``
  failures from one address within a minute, every further attempt from it is refused
  (closed with 4429) until the oldest failure is a minute old, so that tokens cannot be
  tried at line rate. Only presented credentials that fail count: a socket without any
  credential is no guess.
- **Logins** at ``POST /api/auth/token/`` (docs/protocol.md §11). Failed logins are
  counted per client address (``CALLS_LOGIN_FAILURES_PER_ADDRESS``) and per username
  (``CALLS_LOGIN_FAILURES_PER_USERNAME``) over ``LOGIN_WINDOW_SECS``, ten minutes; past
  either limit the endpoint answers 429 with ``Retry-After`` (the seconds until enough of
  the failures have left the window) without checking the password, so a locked-out
  guesser learns nothing, not even from a right guess. The window is ten minutes and the
  defaults are 10 per username and 20 per address: a guesser gets about 1,400 guesses a
  day at one account (and 2,900 from one address), too few for any password that is not
  among the very commonest, while a person who mistyped a few times waits ten minutes at
  most and is told how long. The address limit is the larger one because one address
  (an office, a carrier's NAT) is shared by many users.
  Each attempt is counted before its password is checked (and uncounted if it turns
  out not to have failed), so that parallel requests cannot pass the limit.
  A successful login forgets its username's failures (the user has shown that they know
  the password, and their typos before it should not lock them out later) but not its
  address's: otherwise one account of their own would let a guesser wipe their
  address's count between guesses at other accounts.

  We used neither of the usual libraries: DRF's throttles count requests, not failures
  (a login throttle built on them refuses a user's right password after a few
  legitimate calls, or lets guesses through below a request rate), and django-axes
  writes a database row per attempt and hooks the authentication backends, so every
  ``authenticate()`` of the project (the admin's too) would go through it; these sliding
  windows are the websocket throttle's own code, already shared through Redis.

The memory store is bounded (``MAX_TRACKED_KEYS`` keys; past that, expired keys go
first, then the least recently counted ones). A store that cannot be reached (Redis
down) lets attempts through and logs a warning: refusing every login would help nobody.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import secrets
import threading
import time
import unicodedata
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from django.conf import settings

logger = logging.getLogger("calls")

WINDOW_SECS = 60.0  # websocket authentication failures (CALLS_AUTH_FAILURES_PER_MINUTE)
LOGIN_WINDOW_SECS = 600.0  # failed logins (CALLS_LOGIN_FAILURES_PER_ADDRESS, …_PER_USERNAME)
MAX_TRACKED_KEYS = 100_000  # memory bound of each in-process store
EVICT_TO = 0.9  # a full memory store evicts down to this share of its bound, so eviction is rare


def client_address(scope: dict) -> str:
    """The websocket client's address (see ``forwarded_client_address``)."""
    peer = (scope.get("client") or ("unknown", 0))[0]
    forwarded = next((value for name, value in scope.get("headers", []) if name == b"x-forwarded-for"), None)
    return forwarded_client_address(peer, forwarded.decode("latin1") if forwarded is not None else None)


def request_client_address(request: Any) -> str:
    """An HTTP client's address: ``REMOTE_ADDR``, or the address a trusted proxy forwarded
    (``forwarded_client_address``), as ``calls/ops.py`` reads it."""
    peer = request.META.get("REMOTE_ADDR") or "unknown"
    return forwarded_client_address(peer, request.headers.get("X-Forwarded-For"))


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


class Verdict(NamedTuple):
    allowed: bool  # fewer than the limit of events were in the window
    retry_after: float  # when refused: seconds until the count is below the limit again
    event: str | None = None  # the event ``hit`` recorded, for ``forget``


ALLOWED = Verdict(True, 0.0)


class SlidingWindows(Protocol):
    """Events per key within the last ``window_secs``; each method has an async twin
    (``a…``) for the event loop. An event leaves the window ``window_secs`` after it."""

    window_secs: float

    def check(self, key: str, limit: int) -> Verdict:
        """Whether fewer than ``limit`` events are in the key's window; records nothing."""
        ...

    def hit(self, key: str, limit: int) -> Verdict:
        """Like ``check``, and when allowed, records an event now (in the same atomic step)."""
        ...

    def forget(self, key: str, event: str) -> None:
        """Remove one event recorded by ``hit``."""
        ...

    def clear(self, key: str) -> None:
        """Remove every event of the key."""
        ...

    async def acheck(self, key: str, limit: int) -> Verdict: ...

    async def ahit(self, key: str, limit: int) -> Verdict: ...

    async def aforget(self, key: str, event: str) -> None: ...

    async def aclear(self, key: str) -> None: ...


def _new_event(now: float) -> str:
    return f"{now:.6f}:{secrets.token_hex(4)}"  # unique, so that simultaneous events all count


class MemoryWindows:
    """``SlidingWindows`` in this process (monotonic clock), at most ``max_keys`` keys.

    A lock makes each operation atomic: logins run in worker threads, handshakes on the loop.
    """

    def __init__(self, window_secs: float, max_keys: int = MAX_TRACKED_KEYS) -> None:
        self.window_secs = window_secs
        self.max_keys = max_keys
        self._events: OrderedDict[str, deque[tuple[float, str]]] = OrderedDict()  # least recently hit first
        self._lock = threading.Lock()

    def check(self, key: str, limit: int) -> Verdict:
        return self._count(key, limit, record=False)

    def hit(self, key: str, limit: int) -> Verdict:
        return self._count(key, limit, record=True)

    def forget(self, key: str, event: str) -> None:
        with self._lock:
            events = self._events.get(key)
            if events is None:
                return
            for item in events:
                if item[1] == event:
                    events.remove(item)
                    break
            if not events:
                del self._events[key]

    def clear(self, key: str) -> None:
        with self._lock:
            self._events.pop(key, None)

    async def acheck(self, key: str, limit: int) -> Verdict:
        return self.check(key, limit)

    async def ahit(self, key: str, limit: int) -> Verdict:
        return self.hit(key, limit)

    async def aforget(self, key: str, event: str) -> None:
        self.forget(key, event)

    async def aclear(self, key: str) -> None:
        self.clear(key)

    def __len__(self) -> int:
        return len(self._events)

    def _count(self, key: str, limit: int, *, record: bool) -> Verdict:
        now = time.monotonic()
        with self._lock:
            events = self._events.get(key)
            if events is not None:
                self._prune(events, now)
                if len(events) >= limit:
                    return Verdict(False, max(0.0, events[len(events) - limit][0] + self.window_secs - now))
                if not events and not record:
                    del self._events[key]
            if not record:
                return ALLOWED
            if events is None:
                self._make_room(now)
                events = self._events[key] = deque()
            else:
                self._events.move_to_end(key)
            event = _new_event(now)
            events.append((now, event))
            return Verdict(True, 0.0, event)

    def _prune(self, events: deque[tuple[float, str]], now: float) -> None:
        while events and now - events[0][0] >= self.window_secs:
            events.popleft()

    def _make_room(self, now: float) -> None:
        """Called with the lock held, before a new key: keep the store within its bound."""
        if len(self._events) < self.max_keys:
            return
        for known, events in list(self._events.items()):
            self._prune(events, now)
            if not events:
                del self._events[known]
        while len(self._events) >= self.max_keys * EVICT_TO:
            self._events.popitem(last=False)


# One atomic step: drop the events that left the window, count, and record one when the
# count is below the limit (ARGV[4] is the event, '' to only count). When refused, the
# answer carries the time of the event whose departure brings the count below the limit.
_COUNT_SCRIPT = """
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count >= limit then
  local blocking = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
  return {0, blocking[2]}
end
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000) + 1000)
end
return {1, '0'}
"""


class RedisWindows:
    """``SlidingWindows`` in Redis (wall clock, shared by every process): a sorted set of
    event times per key, expiring with the window. It holds a blocking client for the
    synchronous methods (login views run in threads) and an asyncio one for the loop."""

    def __init__(self, url: str, prefix: str, window_secs: float) -> None:
        import redis
        import redis.asyncio as aioredis

        self.prefix = prefix
        self.window_secs = window_secs
        self.redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.aredis = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._script = self.redis.register_script(_COUNT_SCRIPT)
        self._ascript = self.aredis.register_script(_COUNT_SCRIPT)

    def check(self, key: str, limit: int) -> Verdict:
        now = time.time()
        return self._verdict(self._script(keys=[self.prefix + key], args=self._args(now, limit, "")), now, None)

    def hit(self, key: str, limit: int) -> Verdict:
        now = time.time()
        event = _new_event(now)
        return self._verdict(self._script(keys=[self.prefix + key], args=self._args(now, limit, event)), now, event)

    def forget(self, key: str, event: str) -> None:
        self.redis.zrem(self.prefix + key, event)

    def clear(self, key: str) -> None:
        self.redis.delete(self.prefix + key)

    async def acheck(self, key: str, limit: int) -> Verdict:
        now = time.time()
        reply = await self._ascript(keys=[self.prefix + key], args=self._args(now, limit, ""))
        return self._verdict(reply, now, None)

    async def ahit(self, key: str, limit: int) -> Verdict:
        now = time.time()
        event = _new_event(now)
        reply = await self._ascript(keys=[self.prefix + key], args=self._args(now, limit, event))
        return self._verdict(reply, now, event)

    async def aforget(self, key: str, event: str) -> None:
        await self.aredis.zrem(self.prefix + key, event)

    async def aclear(self, key: str) -> None:
        await self.aredis.delete(self.prefix + key)

    def _args(self, now: float, limit: int, event: str) -> list[str | int]:
        return [f"{now:.6f}", f"{self.window_secs:.6f}", limit, event]

    def _verdict(self, reply: list[Any], now: float, event: str | None) -> Verdict:
        allowed, blocking = reply
        if allowed:
            return Verdict(True, 0.0, event or None)
        return Verdict(False, max(0.0, float(blocking) + self.window_secs - now))


def sliding_windows(prefix: str, window_secs: float) -> MemoryWindows | RedisWindows:
    """A store for one kind of event: in Redis when ``REDIS_URL`` is set, else in memory."""
    if settings.REDIS_URL:
        return RedisWindows(settings.REDIS_URL, prefix, window_secs)
    return MemoryWindows(window_secs)


class AuthThrottle:
    """Failed websocket authentications per client address (docs/protocol.md §2)."""

    def __init__(self, windows: SlidingWindows) -> None:
        self.windows = windows

    async def blocked(self, address: str) -> bool:
        return not (await self.windows.acheck(address, settings.CALLS_AUTH_FAILURES_PER_MINUTE)).allowed

    async def record_failure(self, address: str) -> None:
        await self.windows.ahit(address, settings.CALLS_AUTH_FAILURES_PER_MINUTE)


def username_key(username: str) -> str:
    """The per-username key: a digest of the NFKC, case-folded name, so that case
    variants (which some databases' collations match as one user) share a count, and
    a key's size does not depend on what a client sent."""
    folded = unicodedata.normalize("NFKC", username).casefold()
    return hashlib.sha256(folded.encode()).hexdigest()[:32]


@dataclass
class LoginAttempt:
    """One login, counted as a failure in advance; tell it how it ended."""

    throttle: LoginThrottle
    address: str
    username: str | None  # the per-username key
    retry_after: float = 0.0  # > 0: refused, the password must not be checked
    events: list[tuple[SlidingWindows, str, str]] = field(default_factory=list)  # (store, key, event)

    @property
    def refused(self) -> bool:
        return self.retry_after > 0

    def failed(self) -> None:
        """Wrong credentials: the failures counted in advance stay."""

    def succeeded(self) -> None:
        """Not a failure: uncount it at the address, and forget the username's failures."""
        username = self.username
        try:
            for store, key, event in self.events:
                if store is self.throttle.by_address:
                    store.forget(key, event)
            if username is not None:
                self.throttle.by_username.clear(username)
        except Exception as exc:
            logger.warning("login throttle unavailable: %s", exc)

    def abandoned(self) -> None:
        """No password was checked (a malformed request, a server error): uncount it."""
        try:
            for store, key, event in self.events:
                store.forget(key, event)
        except Exception as exc:
            logger.warning("login throttle unavailable: %s", exc)


class LoginThrottle:
    """Failed logins per client address and per username (docs/protocol.md §11)."""

    def __init__(self, by_address: SlidingWindows, by_username: SlidingWindows) -> None:
        self.by_address = by_address
        self.by_username = by_username

    def begin(self, address: str, username: str | None) -> LoginAttempt:
        """Count a login as a failure before its password is checked, or refuse it."""
        attempt = LoginAttempt(self, address, username_key(username) if username else None)
        try:
            self._begin(attempt)
        except Exception as exc:
            logger.warning("login throttle unavailable: %s", exc)
            attempt.abandoned()
            return LoginAttempt(self, address, None)
        return attempt

    def _begin(self, attempt: LoginAttempt) -> None:
        address_limit = settings.CALLS_LOGIN_FAILURES_PER_ADDRESS
        username_limit = settings.CALLS_LOGIN_FAILURES_PER_USERNAME
        verdicts = [self.by_address.hit(attempt.address, address_limit)]
        if verdicts[0].event is not None:
            attempt.events.append((self.by_address, attempt.address, verdicts[0].event))
        if attempt.username is not None:
            if verdicts[0].allowed:
                verdicts.append(self.by_username.hit(attempt.username, username_limit))
                if verdicts[1].event is not None:
                    attempt.events.append((self.by_username, attempt.username, verdicts[1].event))
            else:  # refused anyway: only find out for how long
                verdicts.append(self.by_username.check(attempt.username, username_limit))
        refusals = [verdict.retry_after for verdict in verdicts if not verdict.allowed]
        if refusals:
            attempt.abandoned()
            attempt.events.clear()
            attempt.retry_after = float(max(1, math.ceil(round(max(refusals), 3))))  # whole seconds, float noise aside


_throttle: AuthThrottle | None = None
_login_throttle: LoginThrottle | None = None


def get_throttle() -> AuthThrottle:
    """The websocket handshakes' throttle."""
    global _throttle
    if _throttle is None:
        _throttle = AuthThrottle(sliding_windows("calls:authfail:", WINDOW_SECS))
    return _throttle


def get_login_throttle() -> LoginThrottle:
    global _login_throttle
    if _login_throttle is None:
        _login_throttle = LoginThrottle(
            sliding_windows("calls:loginfail:address:", LOGIN_WINDOW_SECS),
            sliding_windows("calls:loginfail:username:", LOGIN_WINDOW_SECS),
        )
    return _login_throttle


def reset_throttle() -> None:
    """Forget both throttles' stores (their next use builds them from the settings)."""
    global _throttle, _login_throttle
    _throttle = None
    _login_throttle = None
