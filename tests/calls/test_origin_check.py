"""Tests that ``GET /api/calls/origin-check/`` answers, for any origin, what the websocket's
Origin check decides, so that signaling.js can tell a refused origin from a dropped network."""

from __future__ import annotations

from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.test import Client, override_settings

from calls.auth.websocket import OriginCheck
from tests.conftest import RECEIVE_TIMEOUT_SECS

URL = "/api/calls/origin-check/"
# tests/settings.py: ALLOWED_HOSTS=localhost,127.0.0.1,testserver
ORIGINS = [
    ("http://localhost:5173", True),
    ("https://127.0.0.1", True),
    ("https://chat.example.com", True),  # in CSRF_TRUSTED_ORIGINS below
    ("http://chat.example.com", False),
    ("https://evil.example", False),
    ("null", False),
    ("http://[::1", False),  # not a URL
]
trusted = override_settings(CSRF_TRUSTED_ORIGINS=["https://chat.example.com"])


@pytest.fixture
def client() -> Client:
    return Client()


async def accept(scope: dict, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "websocket.accept"})


async def websocket_accepts(origin: str) -> bool:
    communicator = WebsocketCommunicator(OriginCheck(accept), "/ws/calls/", headers=[(b"origin", origin.encode())])
    try:
        connected, _ = await communicator.connect(timeout=RECEIVE_TIMEOUT_SECS)
    except ValueError:
        return False  # channels cannot parse it either; the handshake fails
    await communicator.disconnect()
    return connected


@trusted
@pytest.mark.parametrize(("origin", "allowed"), ORIGINS)
def test_it_answers_whether_the_origin_is_allowed(client: Client, origin: str, allowed: bool) -> None:
    response = client.get(URL, headers={"Origin": origin})
    assert response.status_code == 200
    assert response.json() == {"allowed": allowed}


@trusted
@pytest.mark.django_db(transaction=True)  # channels' denier closes old database connections
@pytest.mark.parametrize(("origin", "allowed"), ORIGINS)
async def test_its_answer_is_the_websockets_decision(async_client: Any, origin: str, allowed: bool) -> None:
    response = await async_client.get(URL, headers={"Origin": origin})
    assert response.json()["allowed"] is await websocket_accepts(origin) is allowed


def test_no_origin_is_allowed_as_for_the_websocket(client: Client) -> None:
    assert client.get(URL).json() == {"allowed": True}


def test_a_refused_origin_can_read_the_answer_without_authentication(client: Client) -> None:
    response = client.get(URL, headers={"Origin": "https://evil.example"})
    assert response["Access-Control-Allow-Origin"] == "*"
    assert "origin" in response["Vary"].lower()
    assert response["Cache-Control"] == "no-store"


def test_it_answers_get_only(client: Client) -> None:
    assert client.post(URL, headers={"Origin": "https://evil.example"}).status_code == 405
