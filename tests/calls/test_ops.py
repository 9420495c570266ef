"""Tests that operators get liveness, readiness and metrics, and that metrics are
closed to the public."""

from __future__ import annotations

import pytest
from django.test import AsyncClient, Client

from accounts.models import User
from calls.presence import get_presence
from calls.presence.base import PresenceUnavailable
from tests.calls.conftest import InRoom

pytestmark = pytest.mark.django_db(transaction=True)


def test_healthz_answers_ok(client: Client) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_readyz_checks_the_database_the_layer_and_presence(async_client: AsyncClient) -> None:
    response = await async_client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "channelLayer": "ok", "presence": "ok"},
    }


async def test_readyz_stays_ready_under_frequent_probes(async_client: AsyncClient) -> None:
    """Tests that probes leave nothing behind: a channel layer holds at most 100 messages
    per channel, and load balancers probe every few seconds."""
    for _ in range(150):
        assert (await async_client.get("/readyz")).status_code == 200


async def test_readyz_is_503_when_presence_is_unreachable(
    async_client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreachable() -> None:
        raise PresenceUnavailable("connection refused")

    monkeypatch.setattr(get_presence(), "ping", unreachable)
    response = await async_client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["presence"] == "unavailable"


async def test_readyz_checks_a_real_redis(async_client: AsyncClient, settings: object, redis_url: str) -> None:
    settings.REDIS_URL = redis_url  # type: ignore[attr-defined]
    settings.CALLS_PRESENCE_BACKEND = "calls.presence.redis.RedisPresence"  # type: ignore[attr-defined]
    assert (await async_client.get("/readyz")).status_code == 200
    await get_presence().close()  # type: ignore[attr-defined]


async def test_metrics_count_connections_relays_errors_and_joins(
    in_room: InRoom, async_client: AsyncClient, alice: User, bob: User
) -> None:
    before = await scrape(async_client)
    sender, receiver = await in_room("metered", alice, bob)
    await sender.send("webrtc:offer", {"callRoomId": "metered", "targetSocketId": receiver.socket_id,
                                       "offer": {"type": "offer", "sdp": "v=0"}})  # fmt: skip
    await receiver.expect("webrtc:offer")
    await sender.send("webrtc:leave-room", {"callRoomId": "nowhere"})
    await sender.expect_error("not-in-room")

    after = await scrape(async_client)
    assert delta(before, after, "calls_connections") == 2
    assert delta(before, after, "calls_participants") == 2
    assert delta(before, after, "calls_rooms") == 1
    assert delta(before, after, 'calls_relayed_messages_total{event="webrtc:offer"}') == 1
    assert delta(before, after, 'calls_signaling_errors_total{code="not-in-room"}') == 1
    assert delta(before, after, "calls_join_seconds_count") == 2


async def scrape(async_client: AsyncClient) -> dict[str, float]:
    response = await async_client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for line in response.content.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def test_metrics_are_refused_to_other_addresses(client: Client) -> None:
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 403


def test_metrics_accept_a_configured_network(client: Client, settings: object) -> None:
    settings.CALLS_METRICS_ALLOWED_IPS = ["10.1.0.0/16"]  # type: ignore[attr-defined]
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403


def test_metrics_accept_the_bearer_token(client: Client, settings: object) -> None:
    settings.CALLS_METRICS_TOKEN = "scrape-secret"  # type: ignore[attr-defined]
    headers = {"Authorization": "Bearer scrape-secret"}
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9", headers=headers).status_code == 200
    wrong = {"Authorization": "Bearer guess"}
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9", headers=wrong).status_code == 403


def test_metrics_are_refused_through_an_unknown_proxy(client: Client) -> None:
    """A loopback peer forwarding for someone (nginx on the host) is no local scraper."""
    assert (
        client.get("/metrics", REMOTE_ADDR="127.0.0.1", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 403
    )


def test_metrics_through_a_trusted_proxy_judge_the_client(client: Client, settings: object) -> None:
    settings.CALLS_TRUSTED_PROXIES = ["10.0.0.2"]  # type: ignore[attr-defined]
    settings.CALLS_METRICS_ALLOWED_IPS = ["192.0.2.0/24"]  # type: ignore[attr-defined]
    allowed = client.get("/metrics", REMOTE_ADDR="10.0.0.2", headers={"X-Forwarded-For": "192.0.2.10"})
    refused = client.get("/metrics", REMOTE_ADDR="10.0.0.2", headers={"X-Forwarded-For": "203.0.113.9"})
    assert (allowed.status_code, refused.status_code) == (200, 403)
