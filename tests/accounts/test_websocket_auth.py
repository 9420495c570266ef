"""Tests that websocket handshakes are authenticated as docs/protocol.md §2 says."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import threading

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from accounts.models import User
from calls.auth.websocket import AUTH_EXPIRES_AT, user_and_expiry_from_token
from tests.accounts.conftest import authenticated_scope
from tests.conftest import RECEIVE_TIMEOUT_SECS, ConnectFactory, access_token, history_written, make_user

pytestmark = pytest.mark.django_db(transaction=True)

ALLOWED_ORIGIN = (b"origin", b"http://localhost:8000")


async def handshake(
    path: str, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[bool, object, WebsocketCommunicator]:
    from config.asgi import application

    communicator = WebsocketCommunicator(application, path, headers=headers or [])
    connected, detail = await communicator.connect(timeout=RECEIVE_TIMEOUT_SECS)
    return connected, detail, communicator


async def assert_closed_4401(path: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    connected, _, communicator = await handshake(path, headers)
    assert connected, "the socket is accepted, then closed"
    message = await communicator.receive_output(timeout=RECEIVE_TIMEOUT_SECS)
    assert message == {"type": "websocket.close", "code": 4401}
    await communicator.disconnect()


async def assert_connected_as(user: User, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    connected, _, communicator = await handshake(path, headers)
    assert connected
    frame = await communicator.receive_json_from(timeout=RECEIVE_TIMEOUT_SECS)
    assert frame["event"] == "webrtc:connected"
    assert frame["data"]["userId"] == str(user.pk)
    assert len(frame["data"]["socketId"]) >= 16
    await communicator.disconnect()


def session_cookie(user: User) -> tuple[bytes, bytes]:
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return (b"cookie", f"{settings.SESSION_COOKIE_NAME}={session.session_key}".encode())


def b64(part: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


async def test_it_accepts_a_query_token(alice: User) -> None:
    await assert_connected_as(alice, f"/ws/calls/?token={access_token(alice)}")


async def test_it_accepts_a_bearer_header(alice: User) -> None:
    await assert_connected_as(alice, "/ws/calls/", [(b"authorization", f"Bearer {access_token(alice)}".encode())])


async def test_it_accepts_a_session_cookie_with_an_allowed_origin(alice: User) -> None:
    await assert_connected_as(
        alice, "/ws/calls/", [ALLOWED_ORIGIN, await database_sync_to_async(session_cookie)(alice)]
    )


async def test_the_query_token_wins_over_the_header_and_the_session(alice: User, bob: User) -> None:
    headers = [
        ALLOWED_ORIGIN,
        await database_sync_to_async(session_cookie)(bob),
        (b"authorization", f"Bearer {access_token(bob)}".encode()),
    ]
    await assert_connected_as(alice, f"/ws/calls/?token={access_token(alice)}", headers)


async def test_the_header_wins_over_the_session(alice: User, bob: User) -> None:
    headers = [
        ALLOWED_ORIGIN,
        await database_sync_to_async(session_cookie)(bob),
        (b"authorization", f"Bearer {access_token(alice)}".encode()),
    ]
    await assert_connected_as(alice, "/ws/calls/", headers)


async def test_it_closes_4401_without_credentials(db: None) -> None:
    await assert_closed_4401("/ws/calls/")


async def test_it_closes_4401_for_a_malformed_token(db: None) -> None:
    await assert_closed_4401("/ws/calls/?token=not.a.jwt")


async def test_it_closes_4401_for_a_bad_bearer_header(alice: User) -> None:
    await assert_closed_4401("/ws/calls/", [(b"authorization", b"Bearer garbage")])
    await assert_closed_4401("/ws/calls/", [(b"authorization", f"Basic {access_token(alice)}".encode())])


async def test_it_closes_4401_for_a_wrong_signature(alice: User) -> None:
    header, payload, signature = access_token(alice).split(".")
    forged_payload = json.loads(base64.urlsafe_b64decode(payload + "==")) | {"user_id": str(alice.pk)}
    await assert_closed_4401(f"/ws/calls/?token={header}.{b64(forged_payload)}.{signature}")
    await assert_closed_4401(f"/ws/calls/?token={header}.{payload}.{signature[:-4]}AAAA")


async def test_it_closes_4401_for_alg_none(alice: User) -> None:
    _, payload, _ = access_token(alice).split(".")
    await assert_closed_4401(f"/ws/calls/?token={b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.")


async def test_it_closes_4401_for_an_expired_token(alice: User) -> None:
    token = AccessToken.for_user(alice)
    token.set_exp(from_time=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2), lifetime=dt.timedelta(minutes=5))
    await assert_closed_4401(f"/ws/calls/?token={token}")


async def test_it_closes_4401_for_a_refresh_token(alice: User) -> None:
    await assert_closed_4401(f"/ws/calls/?token={RefreshToken.for_user(alice)}")


async def test_it_closes_4401_for_an_inactive_user(db: None) -> None:
    ghost = await database_sync_to_async(make_user)("ghost", active=False)
    await assert_closed_4401(f"/ws/calls/?token={access_token(ghost)}")


async def test_it_closes_4401_for_an_inactive_users_session(db: None) -> None:
    ghost = await database_sync_to_async(make_user)("ghost")
    cookie = await database_sync_to_async(session_cookie)(ghost)
    await User.objects.filter(pk=ghost.pk).aupdate(is_active=False)
    await assert_closed_4401("/ws/calls/", [ALLOWED_ORIGIN, cookie])


async def test_it_refuses_a_foreign_origin_with_403(alice: User) -> None:
    connected, detail, communicator = await handshake(
        f"/ws/calls/?token={access_token(alice)}", [(b"origin", b"https://evil.example")]
    )
    # Closed before acceptance: the ASGI spec has the server answer the handshake with
    # HTTP 403 (checked against a real daphne in tests/test_server_process.py).
    assert not connected
    assert detail == 1000
    await communicator.disconnect()


async def test_it_accepts_a_token_without_origin(alice: User) -> None:
    await assert_connected_as(alice, f"/ws/calls/?token={access_token(alice)}", [])


async def test_it_ignores_the_session_cookie_without_origin(alice: User) -> None:
    await assert_closed_4401("/ws/calls/", [await database_sync_to_async(session_cookie)(alice)])


async def test_an_unauthenticated_socket_gets_no_event_handled(db: None) -> None:
    connected, _, communicator = await handshake("/ws/calls/")
    assert connected
    await communicator.send_json_to({"event": "webrtc:join-room", "data": {"callRoomId": "r1"}})
    assert (await communicator.receive_output(timeout=RECEIVE_TIMEOUT_SECS))["code"] == 4401
    assert await communicator.receive_nothing(timeout=0.2)
    await communicator.disconnect()


async def test_the_scope_says_when_the_token_expires(alice: User) -> None:
    """Tests that a token's connection carries the token's ``exp`` in ``AUTH_EXPIRES_AT``."""
    token = AccessToken.for_user(alice)
    for path, headers in [
        (f"/ws/calls/?token={token}", []),
        ("/ws/calls/", [(b"authorization", f"Bearer {token}".encode())]),
    ]:
        scope = await authenticated_scope(path, headers)
        assert scope["user"].pk == alice.pk
        assert scope[AUTH_EXPIRES_AT] == float(token["exp"])


async def test_the_scope_says_when_the_session_expires(alice: User) -> None:
    """Tests that a session's connection carries the session's expiry date."""
    cookie = await database_sync_to_async(session_cookie)(alice)
    session_key = cookie[1].decode().partition("=")[2]
    expire_date = (await Session.objects.aget(session_key=session_key)).expire_date
    scope = await authenticated_scope("/ws/calls/", [ALLOWED_ORIGIN, cookie])
    assert scope["user"].pk == alice.pk
    assert scope[AUTH_EXPIRES_AT] == expire_date.timestamp()


async def test_an_unauthenticated_scope_has_no_expiry(db: None) -> None:
    """Tests that ``AUTH_EXPIRES_AT`` is set for authenticated connections only."""
    scope = await authenticated_scope("/ws/calls/?token=forged")
    assert not scope["user"].is_authenticated
    assert AUTH_EXPIRES_AT not in scope


async def test_a_changed_password_ends_the_sessions_authentication(alice: User) -> None:
    """Tests that a session whose auth hash no longer matches (password changed) is refused."""
    cookie = await database_sync_to_async(session_cookie)(alice)
    alice.set_password("another password")
    await alice.asave()
    await assert_closed_4401("/ws/calls/", [ALLOWED_ORIGIN, cookie])


def test_user_and_expiry_from_token(alice: User) -> None:
    """Tests that the synchronous lookup returns the user and the token's expiry, or nothing."""
    token = AccessToken.for_user(alice)
    user, expires_at = user_and_expiry_from_token(str(token))
    assert user == alice
    assert expires_at == float(token["exp"])
    assert user_and_expiry_from_token("forged") == (None, None)
    assert user_and_expiry_from_token(str(RefreshToken.for_user(alice))) == (None, None)


async def test_the_handshake_does_not_wait_for_the_shared_database_thread(alice: User) -> None:
    """Tests that token and session lookups run on their own threads: a handshake completes
    while database_sync_to_async's one thread (the call-history writer's) is busy."""
    cookie = await database_sync_to_async(session_cookie)(alice)
    started, release = threading.Event(), threading.Event()

    def busy_history_write() -> None:
        started.set()
        release.wait(10)

    blocker = asyncio.ensure_future(database_sync_to_async(busy_history_write)())
    try:
        assert await asyncio.to_thread(started.wait, 5)
        credentials = [(f"/ws/calls/?token={access_token(alice)}", []), ("/ws/calls/", [ALLOWED_ORIGIN, cookie])]
        for path, headers in credentials:
            scope = await asyncio.wait_for(authenticated_scope(path, headers), RECEIVE_TIMEOUT_SECS)
            assert scope["user"].pk == alice.pk
        assert not blocker.done(), "the shared thread was busy all along"
    finally:
        release.set()
        await blocker


async def test_handshakes_and_history_writes_share_the_database(
    connect: ConnectFactory, alice: User, bob: User
) -> None:
    """Tests that handshake lookups (their own threads) and call-history writes (the shared
    thread) run side by side on one database without getting in each other's way."""
    caller = await connect(alice)
    for i in range(10):
        await caller.send("webrtc:join-room", {"callRoomId": f"room-{i}"})  # a history write or two
        others = await asyncio.gather(*(connect(user) for user in (alice, bob, bob)))
        assert [other.user_id for other in others] == [str(alice.pk), str(bob.pk), str(bob.pk)]
        await caller.expect("webrtc:room-joined")
        await asyncio.gather(*(other.close() for other in others))
    await history_written()
