"""Websocket handshake security: the Origin check and authentication.

The stack (see ``config/asgi.py``) is ``OriginCheck`` → cookies →
``WebsocketAuthMiddleware`` → router. It follows PROTOCOL.md §2:

- a foreign ``Origin`` is refused with HTTP 403;
- no ``Origin`` (mobile apps, servers, test peers) is allowed, but then only a token
  authenticates: cross-site websocket hijacking rides on cookies, so the session cookie
  counts only when the browser proved an allowed origin;
- credentials are tried in the order ``?token=``, ``Authorization: Bearer``, session.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from importlib import import_module
from typing import Any, TypeVar
from urllib.parse import parse_qs

from channels.auth import get_user as get_session_user
from channels.db import database_sync_to_async
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from rest_framework.exceptions import AuthenticationFailed
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import AccessToken

from accounts.throttle import client_address, get_throttle

logger = logging.getLogger("accounts")
T = TypeVar("T")

# Scope keys this module sets; consumers read them.
ORIGIN_STATE = "calls.origin"  # "allowed" or "absent"
AUTH_THROTTLED = "calls.auth_throttled"  # True when the address failed too often: close 4429


class OriginCheck(OriginValidator):
    """Channels' origin validator, except that a missing ``Origin`` is let through
    (flagged in the scope so that the session cookie is not honoured)."""

    def __init__(self, application: Any, allowed_origins: list[str] | None = None) -> None:
        if allowed_origins is None:
            allowed_origins = allowed_websocket_origins()
        super().__init__(application, allowed_origins)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        has_origin = any(name == b"origin" for name, _ in scope.get("headers", []))
        scope = dict(scope, **{ORIGIN_STATE: "allowed" if has_origin else "absent"})
        return await super().__call__(scope, receive, send)

    def valid_origin(self, parsed_origin: Any) -> bool:
        if parsed_origin is None:
            return True
        return self.validate_origin(parsed_origin)


def allowed_websocket_origins() -> list[str]:
    """Hosts of ``ALLOWED_HOSTS`` plus the full origins of ``CSRF_TRUSTED_ORIGINS``."""
    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not hosts:
        hosts = ["localhost", "127.0.0.1", "[::1]"]
    return hosts + list(settings.CSRF_TRUSTED_ORIGINS)


def presented_token(scope: dict) -> str | None:
    """The access token the client presented: query parameter first, then the header."""
    query = parse_qs(scope.get("query_string", b"").decode("latin1"))
    if query.get("token"):
        return query["token"][0]
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, credential = value.decode("latin1").partition(" ")
            if scheme.lower() == "bearer":
                return credential.strip()
            return ""  # an Authorization header of another scheme is a failed credential
    return None


@database_sync_to_async
def user_from_token(raw: str) -> Any:
    """The active user an access token names, or ``None`` for any invalid token.

    simplejwt checks the signature with the configured algorithm only (so ``alg: none``
    fails), the expiry, and that the token is an *access* token; ``get_user`` refuses
    inactive users.
    """
    try:
        token = AccessToken(raw)
        return JWTAuthentication().get_user(token)
    except (TokenError, AuthenticationFailed):
        return None


class WebsocketAuthMiddleware:
    """Sets ``scope["user"]`` from a token or, with an allowed Origin, the session named
    by the session cookie (Channels' ``CookieMiddleware`` above it parses the cookies);
    refuses to try at all for an address with too many recent failures.

    The session is read here rather than by Channels' ``SessionMiddleware``, which also
    wraps ``send`` for the connection's whole life to save the session on HTTP responses,
    which a websocket never sends: on every relayed frame that wrapper cost about a tenth
    of the server's CPU (uvicorn, S1 steady, alternating runs: 133 -> 115 ms per 1k relays
    without it).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.session_store = import_module(settings.SESSION_ENGINE).SessionStore

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        scope = dict(scope)
        address = client_address(scope)
        throttle = get_throttle()
        if await _fail_open(throttle.blocked(address), False):
            scope[AUTH_THROTTLED] = True
            scope["user"] = AnonymousUser()
            return await self.inner(scope, receive, send)
        user: Any = None
        raw = presented_token(scope)
        if raw is not None:
            user = await user_from_token(raw) if raw else None
            if user is None:
                await _fail_open(throttle.record_failure(address), None)
        elif scope.get(ORIGIN_STATE) == "allowed":
            session = self.session_store(scope["cookies"].get(settings.SESSION_COOKIE_NAME))
            user = await get_session_user(dict(scope, session=session))
            if not user.is_active:
                user = None
        scope["user"] = user if user is not None else AnonymousUser()
        return await self.inner(scope, receive, send)


async def _fail_open(check: Awaitable[T], default: T) -> T:
    """Run a throttle operation; if its store is unreachable, log and go on without it
    (signaling itself is unavailable then, and a refused login helps nobody)."""
    try:
        return await check
    except Exception as exc:
        logger.warning("auth throttle unavailable: %s", exc)
        return default
