"""Websocket handshake security: the Origin check and authentication.

The stack (``calls/asgi.py``) is ``OriginCheck`` → cookies → the auth middleware
(``CALLS_WEBSOCKET_AUTH_MIDDLEWARE``, by default ``WebsocketAuthMiddleware``) → router.
It follows docs/protocol.md §2:

- a foreign ``Origin`` is refused with HTTP 403;
- no ``Origin`` (mobile apps, servers, test peers) is allowed, but then only a token
  authenticates: cross-site websocket hijacking rides on cookies, so the session cookie
  counts only when the browser proved an allowed origin;
- credentials are tried in the order ``?token=``, ``?ticket=`` (``calls.auth.tickets``),
  ``Authorization: Bearer``, session;
- every authenticated connection's scope says when its authentication ends
  (``AUTH_EXPIRES_AT``): the token's expiry, the ticket's (that of the credential that
  obtained it) or the session's.

A token is checked by ``CALLS_TOKEN_USER`` (``calls/host.py``; by default
``user_and_expiry_from_token``: a simplejwt access token), so a host with tokens of its
own keeps tickets, sessions and the throttle.

``authenticate`` is the one implementation of the credential checks and the address
throttle: the middleware calls it at the handshake, the Socket.IO endpoint
(``calls/socketio/``) at its connect packet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from importlib import import_module
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlparse

from channels.security.websocket import OriginValidator
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.backends.base import SessionBase
from django.core.exceptions import ValidationError
from django.utils.crypto import constant_time_compare
from rest_framework.exceptions import AuthenticationFailed
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import AccessToken

from calls import host
from calls.auth.throttle import client_address, get_throttle
from calls.auth.tickets import get_ticket_store
from calls.host import in_lookup_thread

logger = logging.getLogger("calls")
T = TypeVar("T")

# Scope keys this module sets; consumers read them.
ORIGIN_STATE = "calls.origin"  # "allowed" or "absent"
AUTH_THROTTLED = "calls.auth_throttled"  # True when the address failed too often: close 4429
# Set on every authenticated connection: when its authentication ends, as a Unix time
# (float), or None when the credential never expires.
AUTH_EXPIRES_AT = "calls.auth_expires_at"


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
        if scope["type"] == "http":
            return await self._check_http(scope, receive, send)
        return await super().__call__(scope, receive, send)

    async def _check_http(self, scope: dict, receive: Any, send: Any) -> Any:
        """The same check for the HTTP requests of a websocket-like transport (Socket.IO's
        long-polling): Channels' validator takes websockets only. A refusal is a 403."""
        parsed = None
        for name, value in scope.get("headers", []):
            if name == b"origin":  # the last one counts, as in Channels' validator
                parsed = urlparse(value.decode("latin1"))
        if self.valid_origin(parsed):
            return await self.application(scope, receive, send)
        await send({"type": "http.response.start", "status": 403, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"Origin not allowed"})

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


def presented_credential(scope: dict) -> tuple[str, str] | None:
    """The credential the client presented, as ``("token", raw)`` or ``("ticket", raw)``,
    in the order of docs/protocol.md §2: ``?token=``, ``?ticket=``, then the header. ``None``
    when there is none; an empty value (an ``Authorization`` header of another scheme)
    is a failed credential."""
    query = parse_qs(scope.get("query_string", b"").decode("latin1"))
    if query.get("token"):
        return "token", query["token"][0]
    if query.get("ticket"):
        return "ticket", query["ticket"][0]
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, credential = value.decode("latin1").partition(" ")
            if scheme.lower() == "bearer":
                return "token", credential.strip()
            return "token", ""  # an Authorization header of another scheme is a failed credential
    return None


def user_and_expiry_from_token(raw: str) -> tuple[Any, float | None]:
    """The active user an access token names and the token's expiry (its ``exp``, a Unix
    time), or ``(None, None)`` for any invalid token. Synchronous (it reads the
    database): wrap it, e.g. ``await in_lookup_thread(user_and_expiry_from_token)(raw)``.

    simplejwt checks the signature with the configured algorithm only (so ``alg: none``
    fails), the expiry, and that the token is an *access* token; ``get_user`` refuses
    inactive users.
    """
    try:
        token = AccessToken(raw)  # type: ignore[arg-type]  # the stubs say Token; it decodes the string
        user = JWTAuthentication().get_user(token)
    except (TokenError, AuthenticationFailed):
        return None, None
    expires_at = token.get("exp")
    return user, float(expires_at) if expires_at is not None else None


def active_user(user_id: str) -> Any:
    """The active user of this primary key, or ``None``."""
    try:
        return get_user_model()._default_manager.filter(pk=user_id, is_active=True).first()
    except (ValueError, ValidationError):
        return None


async def user_and_expiry_from_ticket(raw: str) -> tuple[Any, float | None]:
    """The active user a ticket was issued to and when its authentication ends, or
    ``(None, None)`` for a ticket that is unknown, used, expired, or whose obtaining
    credential has expired meanwhile. Using a ticket spends it, whatever the outcome."""
    ticket = await get_ticket_store().aredeem(raw)
    if ticket is None:
        return None, None
    if ticket.auth_expires_at is not None and ticket.auth_expires_at <= time.time():
        return None, None
    user = await in_lookup_thread(active_user)(ticket.user_id)
    return (user, ticket.auth_expires_at) if user is not None else (None, None)


def user_and_expiry_from_session(session: SessionBase) -> tuple[Any, float | None]:
    """The active user a Django session is logged in as and the session's expiry, or
    ``(None, None)``. Synchronous (it reads the database).

    Django's own checks (``django.contrib.auth.get_user``): the backend is configured and
    the session's auth hash matches the user's (or one made with a fallback secret), so
    a password change logs the session out. Unlike Django, nothing is written: a session
    that fails is refused here, and flushed or re-keyed by the next HTTP request.
    """
    try:
        user_id = get_user_model()._meta.pk.to_python(session[SESSION_KEY])
        backend_path = session[BACKEND_SESSION_KEY]
    except (KeyError, ValidationError):
        return None, None
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None, None
    user = load_backend(backend_path).get_user(user_id)
    if user is None or not user.is_active:
        return None, None
    session_hash = session.get(HASH_SESSION_KEY)
    hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    if not session_hash or not any(constant_time_compare(session_hash, known) for known in hashes):
        return None, None
    return user, session_expires_at(session)


def session_expires_at(session: SessionBase) -> float | None:
    """When a session stops authenticating, as a Unix time. For database-backed sessions
    (``db``, ``cached_db``) that is their row's ``expire_date``, fixed when the session was
    last saved; other engines can only tell ``get_expiry_date()``, counted from now."""
    get_model = getattr(session, "get_model_class", None)
    if get_model is not None and session.session_key:
        rows = get_model()._default_manager.filter(session_key=session.session_key)
        expire_date = rows.values_list("expire_date", flat=True).first()
        if expire_date is not None:
            return expire_date.timestamp()
    return session.get_expiry_date().timestamp()


@dataclass(frozen=True, slots=True)
class Authentication:
    """What authenticating a connection found: its active user (``None``: not
    authenticated), when that authentication ends (a Unix time, or ``None``: never), and
    whether the client's address was refused for too many failures (close 4429)."""

    user: Any = None
    expires_at: float | None = None
    throttled: bool = False


def cookie_session(scope: dict, session_store: type[SessionBase]) -> SessionBase | None:
    """The Django session that the scope's session cookie names, when it may authenticate:
    only with an allowed ``Origin`` (``OriginCheck``; Channels' ``CookieMiddleware``
    parsed the cookies)."""
    if scope.get(ORIGIN_STATE) != "allowed":
        return None
    return session_store(scope["cookies"].get(settings.SESSION_COOKIE_NAME))


async def authenticate(
    address: str, credential: tuple[str, str] | None, session: SessionBase | None = None
) -> Authentication:
    """Authenticate a connection from ``address``: the credential it presented
    (``presented_credential``, or a Socket.IO connect packet's auth object), else the
    session of its cookie (``cookie_session``), under the address throttle. Called once
    per connection by every transport: a throttled address is refused without trying
    anything, and a presented credential that fails counts against its address."""
    throttle = get_throttle()
    if await _fail_open(throttle.blocked(address), False):
        return Authentication(throttled=True)
    user: Any = None
    expires_at: float | None = None
    if credential is not None:
        kind, raw = credential
        if raw and kind == "ticket":
            user, expires_at = await user_and_expiry_from_ticket(raw)
        elif raw:
            user, expires_at = await in_lookup_thread(host.user_and_expiry_from_token)(raw)
        if user is None:
            await _fail_open(throttle.record_failure(address), None)
    elif session is not None:
        user, expires_at = await in_lookup_thread(user_and_expiry_from_session)(session)
    return Authentication(user, expires_at) if user is not None else Authentication()


class WebsocketAuthMiddleware:
    """Sets ``scope["user"]`` (and ``AUTH_EXPIRES_AT``) from a token, a ticket or, with an
    allowed Origin, the session named by the session cookie (Channels'
    ``CookieMiddleware`` above it parses the cookies); refuses to try at all for an
    address with too many recent failures (``authenticate``).

    The session is read here rather than by Channels' ``SessionMiddleware``, which also
    wraps ``send`` for the connection's whole life to save the session on HTTP responses,
    which a websocket never sends: on every relayed frame that wrapper cost about a tenth
    of the server's CPU (docs/benchmarks.md).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.session_store = import_module(settings.SESSION_ENGINE).SessionStore

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        scope = dict(scope)
        credential = presented_credential(scope)
        session = cookie_session(scope, self.session_store) if credential is None else None
        authentication = await authenticate(client_address(scope), credential, session)
        if authentication.throttled:
            scope[AUTH_THROTTLED] = True
        if authentication.user is not None:
            scope["user"] = authentication.user
            scope[AUTH_EXPIRES_AT] = authentication.expires_at
        else:
            scope["user"] = AnonymousUser()
        return await self.inner(scope, receive, send)


async def _fail_open(check: Awaitable[T], default: T) -> T:
    """Run a throttle operation; if its store is unreachable, log and go on without it
    (signaling itself is unavailable then, and a refused login helps nobody)."""
    try:
        return await check
    except Exception as exc:
        logger.warning("auth throttle unavailable: %s", exc)
        return default
