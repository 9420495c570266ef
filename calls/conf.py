"""The settings of ``calls``, read from the environment in one place.

Every ``CALLS_*`` setting has its reader here (``CALLS_SETTINGS``): a project sets it in
its settings module (this project's ``config/settings.py`` assigns each from
``from_environment``), or leaves it out and gets the same environment variable, or the
default, when the app starts (``install_defaults``), so a host project needs none of
them. The host seam's settings (dotted paths, ``calls/host.py``) are code, not
environment, and have their defaults there.

Every reader raises ``ImproperlyConfigured`` with a sentence that names the variable,
the bad value and what is expected, so a misconfigured deployment fails at start-up
instead of at the first call.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None) -> str | None:
    """Return the variable as a string, or ``default`` when it is unset."""
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean: use 1/0, true/false, yes/no or on/off.")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        value = default
    else:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ImproperlyConfigured(f"{name}={raw!r} is not an integer.") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is too small: it must be at least {minimum}.")
    return value


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    """A comma-separated list; blank items are dropped."""
    raw = os.environ.get(name)
    if raw is None:
        return list(default or [])
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_json(name: str, default: Any, *, expect: type) -> Any:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is not valid JSON: {exc}.") from None
    if not isinstance(value, expect):
        raise ImproperlyConfigured(f"{name} must be a JSON {expect.__name__}, got {type(value).__name__}.")
    return value


def _ice_servers(name: str) -> list[Any]:
    servers = env_json(name, [], expect=list)
    for server in servers:
        if not isinstance(server, dict) or not isinstance(server.get("urls"), (str, list)):
            raise ImproperlyConfigured(
                f'{name} must be a list of RTCIceServer objects, each with "urls" (a string or a list).'
            )
    return servers


def _networks(name: str) -> list[str]:
    networks = env_list(name, ["127.0.0.1", "::1"])
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ImproperlyConfigured(f"{network!r} in {name} is not an IP address or network.") from None
    return networks


def _addresses(name: str) -> list[str]:
    addresses = env_list(name)
    for address in addresses:  # matched address by address, so networks are refused
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ImproperlyConfigured(f"{address!r} in {name} is not an IP address.") from None
    return addresses


def _turn_secret(name: str) -> str | None:
    secret = env_str(name) or None
    if env_list("CALLS_TURN_URLS") and not secret:
        raise ImproperlyConfigured(
            "CALLS_TURN_URLS is set without CALLS_TURN_SECRET: set the coturn static-auth-secret."
        )
    return secret


def _presence_backend(name: str) -> str:
    # This process's memory by default, Redis (shared by every process) when REDIS_URL is set.
    default = "calls.presence.redis.RedisPresence" if env_str("REDIS_URL") else "calls.presence.memory.InMemoryPresence"
    return env_str(name) or default


def _int(default: int, minimum: int) -> Callable[[str], int]:
    return lambda name: env_int(name, default, minimum=minimum)


# Names and defaults are those of docs/protocol.md §7 and the README's configuration table.
CALLS_SETTINGS: dict[str, Callable[[str], Any]] = {
    "CALLS_MAX_PARTICIPANTS": _int(16, 1),
    "CALLS_MAX_MESSAGE_BYTES": _int(65536, 1024),
    "CALLS_RATE_LIMIT": _int(100, 1),
    "CALLS_RATE_BURST": _int(500, 1),
    "CALLS_AUTH_FAILURES_PER_MINUTE": _int(30, 1),
    # Failed logins at /api/auth/token/ within ten minutes (calls/auth/throttle.py says why), then 429.
    "CALLS_LOGIN_FAILURES_PER_ADDRESS": _int(20, 1),
    "CALLS_LOGIN_FAILURES_PER_USERNAME": _int(10, 1),
    "CALLS_WS_TICKET_TTL_SECS": _int(30, 1),
    "CALLS_PRESENCE_TTL_SECS": _int(30, 3),
    "CALLS_RESUME_GRACE_SECS": _int(20, 0),
    "CALLS_RESUME_BUFFER": _int(256, 0),
    "CALLS_RING_TIMEOUT_SECS": _int(30, 1),
    "CALLS_MAX_CONNECTIONS_PER_USER": _int(10, 1),
    "CALLS_JOINS_PER_MINUTE": _int(30, 1),
    # Call-history writes waiting for the database, per process; past it, joins are refused
    # with rate-limited until the writer catches up (each queued write is a few hundred bytes).
    "CALLS_HISTORY_QUEUE_LIMIT": _int(10_000, 10),
    "CALLS_ICE_SERVERS": _ice_servers,
    "CALLS_TURN_URLS": env_list,
    "CALLS_TURN_SECRET": _turn_secret,
    "CALLS_TURN_TTL_SECS": _int(86400, 60),
    "CALLS_TRUSTED_PROXIES": _addresses,  # proxies whose X-Forwarded-For counts
    "CALLS_SHUTDOWN_TIMEOUT_SECS": _int(10, 1),
    # The Socket.IO endpoint's Engine.IO heartbeat (calls/socketio/): the server pings every
    # interval and closes a client that has not answered within the timeout (Socket.IO's defaults).
    "CALLS_SOCKETIO_PING_INTERVAL_SECS": _int(25, 1),
    "CALLS_SOCKETIO_PING_TIMEOUT_SECS": _int(20, 1),
    # /metrics is for these addresses, or for anyone presenting CALLS_METRICS_TOKEN as a bearer token.
    "CALLS_METRICS_ALLOWED_IPS": _networks,
    "CALLS_METRICS_TOKEN": lambda name: env_str(name) or None,
    # Where live room membership is kept (calls/presence/).
    "CALLS_PRESENCE_BACKEND": _presence_backend,
}


def from_environment(name: str) -> Any:
    """The value of the ``CALLS_*`` setting ``name`` from its environment variable, or its default."""
    return CALLS_SETTINGS[name](name)


def install_defaults(settings: Any) -> None:
    """Give ``settings`` every ``CALLS_*`` setting it lacks, from the environment (called
    when the app starts, before anything reads them)."""
    for name, read in CALLS_SETTINGS.items():
        if not hasattr(settings, name):
            setattr(settings, name, read(name))
