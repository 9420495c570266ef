"""Per-connection flood control (docs/protocol.md §5 rule 7), independent of any transport.

A token bucket admits ``CALLS_RATE_LIMIT`` frames a second with bursts of
``CALLS_RATE_BURST``. Frames beyond it are dropped; the first drop in any second is
answered with ``rate-limited``, the others silently (an error per dropped frame would
let a flood double itself). A connection that has 1000 frames dropped within a minute is
closed with 4429.

The same per-connection state samples the log: one signaling-error line a second at
most, the rest counted into the next line (docs/protocol.md §5 rule 10), so that a
client within its rate limit cannot write gigabytes of log a day.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from enum import Enum

DROPS_BEFORE_CLOSE = 1000
DROP_WINDOW_SECS = 60.0
RATE_LIMITED_ERROR_INTERVAL_SECS = 1.0
ERROR_LOG_INTERVAL_SECS = 1.0


class Verdict(Enum):
    ADMIT = "admit"
    DROP_WITH_ERROR = "drop-with-error"  # answer rate-limited, once a second
    DROP = "drop"
    CLOSE = "close"  # flooding: close with 4429


class FrameLimiter:
    __slots__ = ("burst", "clock", "drops", "last_error_at", "last_logged_at", "rate", "tokens", "unlogged", "updated")

    def __init__(self, *, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.updated = clock()
        # Times of recent drops; made at the first drop (an empty deque is ~0.7 KB, and
        # most connections never drop anything).
        self.drops: deque[float] | None = None
        self.last_error_at = -RATE_LIMITED_ERROR_INTERVAL_SECS
        self.last_logged_at = -ERROR_LOG_INTERVAL_SECS
        self.unlogged = 0

    def admit(self) -> Verdict:
        """Called once for every frame the connection sends."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return Verdict.ADMIT
        drops = self.drops if self.drops is not None else deque()
        self.drops = drops
        drops.append(now)
        while drops and now - drops[0] > DROP_WINDOW_SECS:
            drops.popleft()
        if len(drops) >= DROPS_BEFORE_CLOSE:
            return Verdict.CLOSE
        if now - self.last_error_at >= RATE_LIMITED_ERROR_INTERVAL_SECS:
            self.last_error_at = now
            return Verdict.DROP_WITH_ERROR
        return Verdict.DROP

    def may_log_error(self) -> int | None:
        """Called for every signaling error: the number of errors left unlogged since the
        last line if this one may be logged, else ``None`` (and it is counted)."""
        now = self.clock()
        if now - self.last_logged_at < ERROR_LOG_INTERVAL_SECS:
            self.unlogged += 1
            return None
        self.last_logged_at = now
        unlogged, self.unlogged = self.unlogged, 0
        return unlogged
