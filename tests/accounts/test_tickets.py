"""Tests that single-use websocket tickets (docs/protocol.md §2 and §11) are
issued at ``POST /api/auth/ws-ticket/`` and authenticate one websocket, in memory and
through Redis."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.sessions.models import Session
from django.test import AsyncClient, Client
from rest_framework_simplejwt.tokens import AccessToken

from accounts.models import User
from calls.auth import tickets
from calls.auth.tickets import RedisTickets, Ticket
from calls.auth.websocket import AUTH_EXPIRES_AT
from tests.accounts.conftest import FrozenClock, authenticated_scope
from tests.conftest import RECEIVE_TIMEOUT_SECS, access_token

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, settings: Any) -> str:
    """The ticket store (the test runs once with each)."""
    if request.param == "redis":
        settings.REDIS_URL = request.getfixturevalue("redis_url")
    tickets.reset_ticket_store()
    return request.param


async def obtain_ticket(token: str) -> dict[str, Any]:
    response = await AsyncClient().post("/api/auth/ws-ticket/", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "no-store"
    return response.json()


async def handshake(path: str, peer: str = "198.51.100.7") -> tuple[str, Any]:
    """Open a websocket on the real application: ``("connected", userId)`` or ``("closed", code)``."""
    from config.asgi import application

    communicator = WebsocketCommunicator(application, path)
    communicator.scope["client"] = (peer, 50000)
    try:
        connected, _ = await communicator.connect(timeout=RECEIVE_TIMEOUT_SECS)
        assert connected
        output = await communicator.receive_output(timeout=RECEIVE_TIMEOUT_SECS)
        if output["type"] == "websocket.close":
            return "closed", output["code"]
        frame = json.loads(output["text"])
        assert frame["event"] == "webrtc:connected"
        return "connected", frame["data"]["userId"]
    finally:
        await communicator.disconnect()


async def test_a_ticket_from_an_access_token_authenticates_one_websocket(store: str, alice: User) -> None:
    """Tests that a ticket obtained with an access token connects its user once; a second
    use is refused with 4401."""
    answer = await obtain_ticket(access_token(alice))
    assert set(answer) == {"ticket", "expiresIn"}
    assert answer["expiresIn"] == 30
    assert len(answer["ticket"]) >= 22, "at least 128 random bits"

    assert await handshake(f"/ws/calls/?ticket={answer['ticket']}") == ("connected", str(alice.pk))
    assert await handshake(f"/ws/calls/?ticket={answer['ticket']}") == ("closed", 4401)


async def test_the_connection_is_authenticated_until_the_token_that_obtained_the_ticket_expires(
    store: str, alice: User
) -> None:
    """Tests that a ticket's connection gets its user and the obtaining token's ``exp``."""
    token = AccessToken.for_user(alice)
    answer = await obtain_ticket(str(token))
    scope = await authenticated_scope(f"/ws/calls/?ticket={answer['ticket']}")
    assert scope["user"].pk == alice.pk
    assert scope[AUTH_EXPIRES_AT] == float(token["exp"])


async def test_the_ticket_ttl_is_a_setting(store: str, settings: Any, alice: User) -> None:
    """Tests that ``expiresIn`` is ``CALLS_WS_TICKET_TTL_SECS``."""
    settings.CALLS_WS_TICKET_TTL_SECS = 7
    assert (await obtain_ticket(access_token(alice)))["expiresIn"] == 7


async def test_an_expired_ticket_is_refused(settings: Any, frozen_clock: FrozenClock, alice: User) -> None:
    """Tests that a ticket is valid for its TTL only (memory store, on a clock the test moves)."""
    frozen_clock.install(tickets)
    settings.CALLS_WS_TICKET_TTL_SECS = 1
    fresh = (await obtain_ticket(access_token(alice)))["ticket"]
    stale = (await obtain_ticket(access_token(alice)))["ticket"]
    frozen_clock.advance(0.9)
    assert await handshake(f"/ws/calls/?ticket={fresh}") == ("connected", str(alice.pk))
    frozen_clock.advance(0.1)
    assert await handshake(f"/ws/calls/?ticket={stale}") == ("closed", 4401)


async def test_an_expired_ticket_is_refused_by_redis(settings: Any, redis_url: str, alice: User) -> None:
    """Tests that a Redis ticket expires with its key (``PX``)."""
    settings.REDIS_URL = redis_url
    settings.CALLS_WS_TICKET_TTL_SECS = 1
    ticket = (await obtain_ticket(access_token(alice)))["ticket"]
    await asyncio.sleep(1.1)
    assert await handshake(f"/ws/calls/?ticket={ticket}") == ("closed", 4401)


async def test_another_process_ticket_is_accepted_once(settings: Any, redis_url: str, alice: User) -> None:
    """Tests that a ticket issued by one process's store is accepted once by another's."""
    settings.REDIS_URL = redis_url
    other_process = RedisTickets(redis_url)
    exp = float(AccessToken.for_user(alice)["exp"])
    ticket = await database_sync_to_async(other_process.issue)(Ticket(str(alice.pk), exp), 30)

    assert await handshake(f"/ws/calls/?ticket={ticket}") == ("connected", str(alice.pk))
    assert await handshake(f"/ws/calls/?ticket={ticket}") == ("closed", 4401)
    assert await other_process.aredeem(ticket) is None, "used means used, on every process"


async def test_two_stores_on_one_redis_redeem_a_ticket_once(redis_url: str) -> None:
    """Tests GETDEL's atomicity across store instances: of concurrent redemptions one wins."""
    stores = [RedisTickets(redis_url) for _ in range(4)]
    ticket = await database_sync_to_async(stores[0].issue)(Ticket("1", None), 30)
    results = await asyncio.gather(*(store.aredeem(ticket) for store in stores for _ in range(5)))
    assert [result for result in results if result is not None] == [Ticket("1", None)]


async def test_a_bad_ticket_is_a_failed_credential(store: str, settings: Any, alice: User) -> None:
    """Tests that unknown and reused tickets count toward the address's throttle (4429)."""
    settings.CALLS_AUTH_FAILURES_PER_MINUTE = 3
    ticket = (await obtain_ticket(access_token(alice)))["ticket"]
    assert await handshake(f"/ws/calls/?ticket={ticket}") == ("connected", str(alice.pk))
    assert await handshake(f"/ws/calls/?ticket={ticket}") == ("closed", 4401)
    assert await handshake("/ws/calls/?ticket=made-up") == ("closed", 4401)
    assert await handshake("/ws/calls/?ticket=" + "A" * 43) == ("closed", 4401)
    assert await handshake(f"/ws/calls/?token={access_token(alice)}") == ("closed", 4429)


async def test_a_ticket_of_a_user_deactivated_since_is_refused(store: str, alice: User) -> None:
    """Tests that the ticket's user must still be active when it is used."""
    ticket = (await obtain_ticket(access_token(alice)))["ticket"]
    await User.objects.filter(pk=alice.pk).aupdate(is_active=False)
    assert await handshake(f"/ws/calls/?ticket={ticket}") == ("closed", 4401)


async def test_a_ticket_whose_credential_expired_is_refused(store: str, alice: User) -> None:
    """Tests that a ticket outliving the credential that obtained it authenticates nothing."""
    store_ = tickets.get_ticket_store()
    ticket = await database_sync_to_async(store_.issue)(Ticket(str(alice.pk), time.time() - 1), 30)
    assert await handshake(f"/ws/calls/?ticket={ticket}") == ("closed", 4401)


async def test_the_token_query_parameter_comes_before_the_ticket(store: str, alice: User, bob: User) -> None:
    """Tests the order of docs/protocol.md §2: ``?token=`` first, then ``?ticket=``."""
    ticket = (await obtain_ticket(access_token(bob)))["ticket"]
    assert await handshake(f"/ws/calls/?ticket={ticket}&token={access_token(alice)}") == ("connected", str(alice.pk))


def test_a_ticket_needs_credentials(client: Client) -> None:
    """Tests that ``ws-ticket`` answers 401 without a credential or with a bad one."""
    assert client.post("/api/auth/ws-ticket/").status_code == 401
    assert client.post("/api/auth/ws-ticket/", headers={"Authorization": "Bearer forged"}).status_code == 401
    assert client.get("/api/auth/ws-ticket/").status_code == 401


def test_a_session_gets_a_ticket_with_its_csrf_token_and_its_expiry(alice: User) -> None:
    """Tests that a session (with CSRF) obtains a ticket carrying the session's expiry."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post("/api/auth/ws-ticket/").status_code == 403, "no CSRF token"
    csrf = "a" * 32
    client.cookies["csrftoken"] = csrf
    response = client.post("/api/auth/ws-ticket/", headers={"X-CSRFToken": csrf})
    assert response.status_code == 200

    store = tickets.get_ticket_store()
    assert isinstance(store, tickets.MemoryTickets)
    session = Session.objects.get(session_key=client.session.session_key)
    assert store.redeem(response.json()["ticket"]) == Ticket(str(alice.pk), session.expire_date.timestamp())


def test_the_memory_store_is_bounded(frozen_clock: FrozenClock) -> None:
    """Tests that the in-process store holds at most its bound of tickets, dropping
    expired ones first and then the oldest."""
    frozen_clock.install(tickets)
    store = tickets.MemoryTickets(max_tickets=10)
    first = [store.issue(Ticket("1", None), 30) for _ in range(10)]
    frozen_clock.advance(31)
    store.issue(Ticket("2", None), 30)
    assert len(store) == 1, "the expired ones went"
    issued = [store.issue(Ticket("3", None), 30) for _ in range(20)]
    assert len(store) == 10
    assert store.redeem(issued[0]) is None, "the oldest went"
    assert store.redeem(issued[-1]) == Ticket("3", None)
    assert store.redeem(first[0]) is None
