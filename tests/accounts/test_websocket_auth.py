"""Tests that websocket handshakes are authenticated as PROTOCOL.md §2 says."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from accounts.models import User
from tests.conftest import RECEIVE_TIMEOUT_SECS, access_token, make_user

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
