"""Tests that iceServers carry coturn-style time-limited TURN credentials (docs/protocol.md §4)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import pytest

from accounts.models import User
from calls.ice import turn_credentials
from tests.conftest import ConnectFactory

pytestmark = pytest.mark.django_db(transaction=True)

STUN = {"urls": "stun:stun.example.org:3478"}
TURN_URLS = ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349?transport=tcp"]


@pytest.mark.parametrize(
    ("user_id", "secret", "ttl_secs", "now", "username", "credential"),
    [
        # Computed once with: printf '%s' USERNAME | openssl dgst -sha1 -hmac SECRET -binary | base64
        ("42", "coturn-shared-secret", 3600, 1_700_000_000, "1700003600:42", "6hSwijAagsWZicuPG1xplnQ8/Tc="),
        ("7", "north-wind", 86400, 1_700_000_000.9, "1700086400:7", "txrUP4sySP5jPCZzzqLBUOe2bUM="),
    ],
)
def test_turn_credentials_match_coturns_use_auth_secret(
    user_id: str, secret: str, ttl_secs: int, now: float, username: str, credential: str
) -> None:
    assert turn_credentials(user_id=user_id, secret=secret, ttl_secs=ttl_secs, now=now) == (username, credential)


def test_turn_credentials_expire_ttl_seconds_from_now() -> None:
    before = int(time.time())
    username, _ = turn_credentials(user_id="42", secret="s", ttl_secs=600)
    after = int(time.time())

    expiry, user_id = username.split(":")
    assert before + 600 <= int(expiry) <= after + 600
    assert user_id == "42"


async def test_room_joined_carries_the_configured_ice_servers_only_without_turn(
    settings: Any, connect: ConnectFactory, alice: User
) -> None:
    settings.CALLS_ICE_SERVERS = [STUN]
    settings.CALLS_TURN_URLS = []
    settings.CALLS_TURN_SECRET = None

    joined = await (await connect(alice)).join("r")

    assert joined["iceServers"] == [STUN]


async def test_room_joined_adds_a_turn_server_with_credentials_for_the_joiner(
    settings: Any, connect: ConnectFactory, alice: User
) -> None:
    settings.CALLS_ICE_SERVERS = [STUN]
    settings.CALLS_TURN_URLS = TURN_URLS
    settings.CALLS_TURN_SECRET = "coturn-shared-secret"
    settings.CALLS_TURN_TTL_SECS = 3600
    client = await connect(alice)

    before = int(time.time())
    joined = await client.join("r")
    after = int(time.time())

    stun, turn = joined["iceServers"]
    assert stun == STUN
    assert turn.keys() == {"urls", "username", "credential"}
    assert turn["urls"] == TURN_URLS
    expiry, user_id = turn["username"].split(":")
    assert user_id == str(alice.pk)
    assert before + 3600 <= int(expiry) <= after + 3600
    digest = hmac.new(b"coturn-shared-secret", turn["username"].encode(), hashlib.sha1).digest()
    assert turn["credential"] == base64.b64encode(digest).decode()
