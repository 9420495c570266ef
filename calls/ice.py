"""The ``iceServers`` sent in ``room-joined`` (docs/protocol.md §4)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

from django.conf import settings


def turn_credentials(*, user_id: str, secret: str, ttl_secs: int, now: float | None = None) -> tuple[str, str]:
    """Time-limited TURN credentials as coturn's ``use-auth-secret`` checks them:
    ``username = "<unix-expiry>:<userId>"``, ``credential = base64(HMAC-SHA1(secret, username))``."""
    expiry = int(now if now is not None else time.time()) + ttl_secs
    username = f"{expiry}:{user_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_servers_for(*, user_id: str) -> list[dict[str, Any]]:
    """The configured ICE servers, plus the TURN servers with credentials for this user."""
    servers = [dict(server) for server in settings.CALLS_ICE_SERVERS]
    if settings.CALLS_TURN_URLS and settings.CALLS_TURN_SECRET:
        username, credential = turn_credentials(
            user_id=user_id, secret=settings.CALLS_TURN_SECRET, ttl_secs=settings.CALLS_TURN_TTL_SECS
        )
        servers.append({"urls": list(settings.CALLS_TURN_URLS), "username": username, "credential": credential})
    return servers
