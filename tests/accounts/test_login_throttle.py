"""Tests that failed logins at ``POST /api/auth/token/`` are throttled per client address
and per username (docs/protocol.md §11), in memory and through Redis."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import rest_framework_simplejwt.serializers
from django.test import Client

from accounts.models import User
from calls.auth import throttle
from tests.accounts import conftest as accounts_conftest
from tests.accounts.conftest import FrozenClock
from tests.conftest import PASSWORD, make_user

pytestmark = pytest.mark.django_db

PROXY = "10.0.0.2"
CLIENT = "198.51.100.7"


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, settings: Any, frozen_clock: FrozenClock) -> str:
    """The throttle's store (this test runs once with each), on a clock the test moves."""
    if request.param == "redis":
        settings.REDIS_URL = request.getfixturevalue("redis_url")
    throttle.reset_throttle()
    frozen_clock.install(throttle)
    return request.param


@pytest.fixture
def password_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The usernames whose password the token endpoint checked, in order."""
    checked: list[str] = []
    authenticate = rest_framework_simplejwt.serializers.authenticate

    def counting(*args: Any, **kwargs: Any) -> Any:
        checked.append(kwargs.get("username", ""))
        return authenticate(*args, **kwargs)

    monkeypatch.setattr(rest_framework_simplejwt.serializers, "authenticate", counting)
    return checked


def login(client: Client, username: str, password: str = PASSWORD, *, via: str | None = None) -> Any:
    """POST the token endpoint; ``via``: the client's address, forwarded by the trusted proxy."""
    extra = {"REMOTE_ADDR": PROXY, "HTTP_X_FORWARDED_FOR": via} if via else {"REMOTE_ADDR": CLIENT}
    return client.post("/api/auth/token/", {"username": username, "password": password}, "application/json", **extra)


def statuses(responses: list[Any]) -> list[int]:
    return [response.status_code for response in responses]


def test_a_hundred_wrong_passwords_are_refused_from_the_limit_on(
    client: Client, store: str, frozen_clock: FrozenClock, alice: User, password_checks: list[str]
) -> None:
    """Tests that past the per-username default (10 per 10 minutes) every login is refused
    with 429 and Retry-After, without its password being checked, until the window passes."""
    responses = [login(client, "alice", "wrong") for _ in range(100)]

    assert statuses(responses) == [401] * 10 + [429] * 90
    assert len(password_checks) == 10, "a refused login's password is never checked"
    refused = responses[-1]
    assert refused["Retry-After"] == "600"
    assert refused.json() == {
        "detail": "Too many failed logins from this address or for this username; try again in 600 seconds."
    }
    assert login(client, "alice").status_code == 429, "not even the right password gets in"
    assert len(password_checks) == 10
    frozen_clock.advance(250)
    assert login(client, "alice")["Retry-After"] == "350"
    frozen_clock.advance(350)
    assert login(client, "alice").status_code == 200


def test_retry_after_is_when_the_oldest_failure_leaves_the_window(
    client: Client, store: str, settings: Any, frozen_clock: FrozenClock, alice: User
) -> None:
    """Tests that the window slides: each failure leaves it ten minutes after it happened."""
    settings.CALLS_LOGIN_FAILURES_PER_USERNAME = 3
    for _ in range(3):
        assert login(client, "alice", "wrong").status_code == 401
        frozen_clock.advance(100)
    assert login(client, "alice", "wrong")["Retry-After"] == "300"  # now t=300: the first left at 0 + 600
    frozen_clock.advance(300)
    assert login(client, "alice", "wrong").status_code == 401  # t=600: one place free, taken again
    assert login(client, "alice")["Retry-After"] == "100"  # the failure of t=100 is now the oldest


def test_another_address_behind_a_trusted_proxy_still_logs_in(
    client: Client, store: str, settings: Any, alice: User, bob: User
) -> None:
    """Tests that the per-address limit blocks every username from that address, and only
    that address: another client behind the same trusted proxy still logs in."""
    settings.CALLS_TRUSTED_PROXIES = [PROXY]
    settings.CALLS_LOGIN_FAILURES_PER_ADDRESS = 5
    assert statuses([login(client, f"user{i}", "wrong", via=CLIENT) for i in range(5)]) == [401] * 5

    assert login(client, "alice", via=CLIENT).status_code == 429, "a different username from the address"
    assert login(client, "bob", via=f"203.0.113.1, {CLIENT}").status_code == 429, "a prepended hop is a lie"
    assert login(client, "alice", via="198.51.100.8").status_code == 200
    assert login(client, "bob", via="198.51.100.8").status_code == 200


def test_an_untrusted_peer_cannot_name_another_address(client: Client, store: str, settings: Any) -> None:
    """Tests that X-Forwarded-For from a peer that is not a trusted proxy is ignored."""
    settings.CALLS_LOGIN_FAILURES_PER_ADDRESS = 3
    for i in range(3):
        response = client.post(
            "/api/auth/token/",
            {"username": f"user{i}", "password": "wrong"},
            "application/json",
            REMOTE_ADDR=CLIENT,
            HTTP_X_FORWARDED_FOR=f"192.0.2.{i}",
        )
        assert response.status_code == 401
    assert login(client, "anyone").status_code == 429


def test_the_username_limit_holds_across_addresses(
    client: Client, store: str, settings: Any, alice: User, bob: User
) -> None:
    """Tests that a username's failures count whatever address they come from, in any
    letter case, and lock out that username only."""
    settings.CALLS_TRUSTED_PROXIES = [PROXY]
    settings.CALLS_LOGIN_FAILURES_PER_USERNAME = 3
    for i, name in enumerate(["alice", "ALICE", "Alice"]):
        assert login(client, name, "wrong", via=f"192.0.2.{i}").status_code == 401

    assert login(client, "alice", via="192.0.2.50").status_code == 429
    assert login(client, "aLiCe", "wrong", via="192.0.2.51").status_code == 429
    assert login(client, "bob", via="192.0.2.50").status_code == 200


def test_a_success_forgets_the_usernames_failures_but_not_the_addresss(
    client: Client, store: str, settings: Any, alice: User, bob: User
) -> None:
    """Tests that a successful login resets the per-username count, is not itself counted,
    and leaves the per-address count as it was."""
    settings.CALLS_LOGIN_FAILURES_PER_ADDRESS = 4
    settings.CALLS_LOGIN_FAILURES_PER_USERNAME = 3
    attempts = [("alice", "wrong"), ("alice", "wrong"), ("alice", PASSWORD), ("alice", "wrong"), ("alice", "wrong")]
    assert statuses([login(client, name, password) for name, password in attempts]) == [401, 401, 200, 401, 401]
    assert login(client, "bob").status_code == 429, "four failures from the address, the success not among them"


def test_requests_that_check_no_password_are_not_counted(client: Client, store: str, settings: Any) -> None:
    """Tests that malformed logins (no password, not JSON) are no failures."""
    make_user("carol")
    settings.CALLS_LOGIN_FAILURES_PER_ADDRESS = 2
    for _ in range(5):
        response = client.post("/api/auth/token/", {"username": "carol"}, "application/json", REMOTE_ADDR=CLIENT)
        assert response.status_code == 400
        assert client.post("/api/auth/token/", "[1]", "application/json", REMOTE_ADDR=CLIENT).status_code == 400
        assert client.post("/api/auth/token/", "{", "application/json", REMOTE_ADDR=CLIENT).status_code == 400
    assert login(client, "carol").status_code == 200


def test_two_processes_share_the_count_through_redis(client: Client, settings: Any, redis_url: str) -> None:
    """Tests that failures counted by one process's stores refuse logins at another's
    (the stores are built anew between the requests, as a second process would)."""
    make_user("carol")
    settings.REDIS_URL = redis_url
    settings.CALLS_LOGIN_FAILURES_PER_USERNAME = 3
    for _ in range(3):
        throttle.reset_throttle()
        assert login(client, "carol", "wrong").status_code == 401
    throttle.reset_throttle()
    assert login(client, "carol").status_code == 429


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_store_counts_checks_and_forgets(kind: str, request: pytest.FixtureRequest) -> None:
    """Tests the sliding-window store's interface: ``hit`` counts up to the limit and no
    further, ``check`` counts nothing, ``forget`` and ``clear`` uncount; with Redis, two
    store instances (two processes) see one count."""
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        first: throttle.SlidingWindows = throttle.RedisWindows(url, "test:", 600)
        second: throttle.SlidingWindows = throttle.RedisWindows(url, "test:", 600)
    else:
        first = second = throttle.MemoryWindows(600)
    hits = [first.hit("k", 2) for _ in range(3)]
    assert [hit.allowed for hit in hits] == [True, True, False]
    assert hits[2].event is None and 599 < hits[2].retry_after <= 600
    assert not second.check("k", 2).allowed
    assert second.check("k", 3).allowed, "check records nothing"
    assert second.check("other", 1).allowed
    second.forget("k", hits[0].event or "")
    assert second.hit("k", 2).allowed
    assert not first.check("k", 2).allowed
    second.clear("k")
    assert first.check("k", 1).allowed


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_the_async_twins_share_the_count(kind: str, request: pytest.FixtureRequest) -> None:
    """Tests that the async methods (the websocket throttle's) and the synchronous ones
    (the login view's) read and write the same windows."""
    if kind == "redis":
        store: throttle.SlidingWindows = throttle.RedisWindows(request.getfixturevalue("redis_url"), "test:", 60)
    else:
        store = throttle.MemoryWindows(60)
    verdict = await store.ahit("k", 1)
    assert verdict.allowed and verdict.event
    assert not store.check("k", 1).allowed
    await store.aforget("k", verdict.event)
    assert (await store.acheck("k", 1)).allowed
    store.hit("k", 1)
    await store.aclear("k")
    assert store.check("k", 1).allowed


def test_the_frozen_clock_moves_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests the tests' clock: ``advance(600)`` is exactly 600 s later, even from a real
    reading where ``reading + 600`` rounds (a sum that crosses a power of two), as when
    the uptime is just below 2**12 s; otherwise a window's end is a reading too early."""
    readings = SimpleNamespace(monotonic=lambda: 4000 + 2**-41, time=lambda: 2147483100 + 2**-22)
    assert (readings.monotonic() + 600) - readings.monotonic() < 600, "the reading rounds"
    assert (readings.time() + 600) - readings.time() < 600, "the reading rounds"
    monkeypatch.setattr(accounts_conftest, "time", readings)
    clock = FrozenClock(monkeypatch)
    started = (clock.monotonic(), clock.time())
    clock.advance(250)
    clock.advance(350)
    assert (clock.monotonic() - started[0], clock.time() - started[1]) == (600, 600)
    store = throttle.MemoryWindows(600)
    clock.install(throttle)
    clock.offset = 0.0
    store.hit("k", 1)
    clock.advance(600)
    assert store.check("k", 1).allowed, "the event left the window 600 s after it"


def test_the_memory_store_is_bounded(frozen_clock: FrozenClock) -> None:
    """Tests that the in-process store keeps at most its bound of keys: expired keys go
    first, then the least recently counted."""
    frozen_clock.install(throttle)
    store = throttle.MemoryWindows(60, max_keys=100)
    for i in range(100):
        store.hit(f"old{i}", 5)
    frozen_clock.advance(61)
    store.hit("kept", 5)
    assert len(store) == 1, "the expired keys made room"
    for i in range(500):
        store.hit(f"new{i}", 5)
        assert len(store) <= 100
    assert not store.check("new499", 1).allowed, "the most recent keys are kept"


def test_an_unreachable_store_lets_logins_through(
    client: Client, settings: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, alice: User
) -> None:
    """Tests that the endpoint fails open, with a warning, when the throttle's store fails."""
    settings.CALLS_LOGIN_FAILURES_PER_USERNAME = 1

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("Redis is down")

    broken: Callable[..., Any] = unreachable
    monkeypatch.setattr(throttle.MemoryWindows, "hit", broken)
    assert statuses([login(client, "alice", "wrong"), login(client, "alice", "wrong")]) == [401, 401]
    assert login(client, "alice").status_code == 200
    assert "login throttle unavailable: Redis is down" in caplog.text
