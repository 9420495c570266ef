"""Tests that failed websocket authentications are throttled per client address
(docs/protocol.md §2), in memory and in Redis, and that only trusted proxies may name the
client's address."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from channels.testing import WebsocketCommunicator

from accounts.models import User
from calls.auth import throttle
from tests.conftest import RECEIVE_TIMEOUT_SECS, access_token

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = 3


class Clock:
    """Both clocks the throttle reads, moved by the test."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset


@pytest.fixture(params=["memory", "redis"])
def clock(request: pytest.FixtureRequest, settings: object, monkeypatch: pytest.MonkeyPatch) -> Clock:
    settings.CALLS_AUTH_FAILURES_PER_MINUTE = LIMIT  # type: ignore[attr-defined]
    if request.param == "redis":
        settings.REDIS_URL = request.getfixturevalue("redis_url")  # type: ignore[attr-defined]
    throttle.reset_throttle()
    fake = Clock()
    monkeypatch.setattr(throttle, "time", SimpleNamespace(monotonic=fake.monotonic, time=fake.time))
    return fake


async def close_code(token: str, peer: str = "198.51.100.7", headers: list | None = None) -> int | None:
    """The close code the server answers a handshake with, or ``None`` if it stays open."""
    from config.asgi import application

    communicator = WebsocketCommunicator(application, f"/ws/calls/?token={token}", headers=headers or [])
    communicator.scope["client"] = (peer, 50000)
    await communicator.connect(timeout=RECEIVE_TIMEOUT_SECS)
    output = await communicator.receive_output(timeout=RECEIVE_TIMEOUT_SECS)
    await communicator.disconnect()
    return output.get("code") if output["type"] == "websocket.close" else None


async def test_an_address_is_refused_after_too_many_failures(clock: Clock, alice: User) -> None:
    for _ in range(LIMIT):
        assert await close_code("forged") == 4401
    assert await close_code(access_token(alice)) == 4429, "even a valid token waits out the minute"
    assert await close_code(access_token(alice), peer="198.51.100.8") is None, "other addresses are not affected"
    clock.offset += 61
    assert await close_code(access_token(alice)) is None


async def test_sockets_without_credentials_are_not_counted(clock: Clock, alice: User) -> None:
    from config.asgi import application

    for _ in range(LIMIT + 2):
        communicator = WebsocketCommunicator(application, "/ws/calls/")
        communicator.scope["client"] = ("198.51.100.7", 50000)
        await communicator.connect()
        assert (await communicator.receive_output())["code"] == 4401
        await communicator.disconnect()
    assert await close_code(access_token(alice)) is None


async def test_a_trusted_proxy_names_the_client(clock: Clock, settings: object, alice: User) -> None:
    settings.CALLS_TRUSTED_PROXIES = ["10.0.0.2"]  # type: ignore[attr-defined]
    for i in range(LIMIT):
        forwarded = [(b"x-forwarded-for", f"192.0.2.{i}, 198.51.100.7".encode())]  # the client may prepend lies
        assert await close_code("forged", peer="10.0.0.2", headers=forwarded) == 4401
    assert (
        await close_code(access_token(alice), peer="10.0.0.2", headers=[(b"x-forwarded-for", b"198.51.100.7")]) == 4429
    )
    assert (
        await close_code(access_token(alice), peer="10.0.0.2", headers=[(b"x-forwarded-for", b"198.51.100.9")]) is None
    )


async def test_an_untrusted_peer_cannot_name_another_address(clock: Clock, alice: User) -> None:
    for i in range(LIMIT):
        forwarded = [(b"x-forwarded-for", f"192.0.2.{i}".encode())]
        assert await close_code("forged", peer="198.51.100.7", headers=forwarded) == 4401
    assert await close_code(access_token(alice), peer="198.51.100.7") == 4429


def test_the_forwarded_address_is_the_nearest_untrusted_hop(settings: object) -> None:
    settings.CALLS_TRUSTED_PROXIES = ["10.0.0.2", "10.0.0.3"]  # type: ignore[attr-defined]
    assert throttle.forwarded_client_address("10.0.0.2", "1.1.1.1, 203.0.113.5, 10.0.0.3") == "203.0.113.5"
    assert throttle.forwarded_client_address("10.0.0.2", "not-an-ip") == "10.0.0.2"
    assert throttle.forwarded_client_address("203.0.113.9", "1.1.1.1") == "203.0.113.9"
    assert throttle.forwarded_client_address("10.0.0.2", None) == "10.0.0.2"
