"""Fixtures of the accounts tests: a fresh ticket store, a clock the test moves, and the
scope the websocket authentication makes."""

from __future__ import annotations

import math
import time
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from channels.sessions import CookieMiddleware
from channels.testing import WebsocketCommunicator

from calls.auth.tickets import reset_ticket_store
from calls.auth.websocket import OriginCheck, WebsocketAuthMiddleware
from tests.conftest import RECEIVE_TIMEOUT_SECS


@pytest.fixture(autouse=True)
def fresh_ticket_store() -> None:
    """Each test starts with no tickets (and a store built from its own settings)."""
    reset_ticket_store()


class FrozenClock:
    """A monotonic and a wall clock that stand still until the test moves them.

    Both start at a whole second, so that ``start + offset`` is exact and a test can assert
    what happens exactly when a window or a TTL ends. From the raw reading (the monotonic
    clock is the uptime, with arbitrary low bits), ``start + 600`` rounds whenever the sum
    crosses a power of two (uptime in [3496, 4096) s, [7592, 8192) s, …), and then
    ``(start + 600) - start`` is 599.9999999999995: an event of the frozen start had not
    left its 600 s window at "600 s later", and the test failed, depending on when it ran.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.started_monotonic = float(math.floor(time.monotonic()))
        self.started_wall = float(math.floor(time.time()))
        self.offset = 0.0

    def monotonic(self) -> float:
        return self.started_monotonic + self.offset

    def time(self) -> float:
        return self.started_wall + self.offset

    def advance(self, secs: float) -> None:
        self.offset += secs

    def install(self, module: ModuleType) -> None:
        """Make ``module.time`` this clock, for the test."""
        self.monkeypatch.setattr(module, "time", SimpleNamespace(monotonic=self.monotonic, time=self.time))


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> FrozenClock:
    return FrozenClock(monkeypatch)


class ScopeCapture:
    """An inner application that keeps the scope the authentication middleware made."""

    def __init__(self) -> None:
        self.scope: dict[str, Any] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scope = scope
        await receive()
        await send({"type": "websocket.close", "code": 1000})


async def authenticated_scope(path: str, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    """The scope the handshake stack (``calls/asgi.py``'s, up to the router) hands on."""
    capture = ScopeCapture()
    application = OriginCheck(CookieMiddleware(WebsocketAuthMiddleware(capture)))
    communicator = WebsocketCommunicator(application, path, headers=headers or [])
    await communicator.connect(timeout=RECEIVE_TIMEOUT_SECS)
    await communicator.disconnect()
    return capture.scope
