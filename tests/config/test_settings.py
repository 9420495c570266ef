"""Tests that settings come from the environment and bad values fail loudly."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

SETTINGS_FILE = Path(__file__).resolve().parents[2] / "config" / "settings.py"
BASE_ENV = {"SECRET_KEY": "x" * 50, "DEBUG": "0"}


def load_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict:
    for name in ("REDIS_URL", "DATABASE_URL", *(name for name in os.environ if name.startswith("CALLS_"))):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**BASE_ENV, **env}.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(SETTINGS_FILE))


# Settings of this server beyond docs/protocol.md §7.
OPERATIONAL_SETTINGS = {
    "CALLS_PRESENCE_BACKEND": "calls.presence.memory.InMemoryPresence",
    "CALLS_TRUSTED_PROXIES": [],
    "CALLS_SHUTDOWN_TIMEOUT_SECS": 10,
    "CALLS_METRICS_ALLOWED_IPS": ["127.0.0.1", "::1"],
    "CALLS_METRICS_TOKEN": None,
    "CALLS_HISTORY_QUEUE_LIMIT": 10_000,
    "CALLS_LOGIN_FAILURES_PER_ADDRESS": 20,
    "CALLS_LOGIN_FAILURES_PER_USERNAME": 10,
    "CALLS_SOCKETIO_PING_INTERVAL_SECS": 25,  # Socket.IO's own defaults
    "CALLS_SOCKETIO_PING_TIMEOUT_SECS": 20,
}


def test_the_operational_settings_have_safe_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_settings(monkeypatch)
    assert {name: loaded[name] for name in OPERATIONAL_SETTINGS} == OPERATIONAL_SETTINGS


def test_the_calls_settings_have_the_protocol_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_settings(monkeypatch)
    protocol = {name: loaded[name] for name in loaded if name.startswith("CALLS_") and name not in OPERATIONAL_SETTINGS}
    assert protocol == {
        "CALLS_MAX_PARTICIPANTS": 16,
        "CALLS_MAX_MESSAGE_BYTES": 65536,
        "CALLS_RATE_LIMIT": 100,
        "CALLS_RATE_BURST": 500,
        "CALLS_AUTH_FAILURES_PER_MINUTE": 30,
        "CALLS_PRESENCE_TTL_SECS": 30,
        "CALLS_RESUME_GRACE_SECS": 20,
        "CALLS_RESUME_BUFFER": 256,
        "CALLS_RING_TIMEOUT_SECS": 30,
        "CALLS_ICE_SERVERS": [],
        "CALLS_TURN_URLS": [],
        "CALLS_TURN_SECRET": None,
        "CALLS_TURN_TTL_SECS": 86400,
        "CALLS_MAX_CONNECTIONS_PER_USER": 10,
        "CALLS_JOINS_PER_MINUTE": 30,
        "CALLS_WS_TICKET_TTL_SECS": 30,
    }


def test_each_calls_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_settings(
        monkeypatch,
        CALLS_MAX_PARTICIPANTS="4",
        CALLS_RATE_LIMIT="7",
        CALLS_ICE_SERVERS='[{"urls": "stun:stun.example.org:3478"}]',
        CALLS_TURN_URLS="turn:a.example:3478, turns:a.example:5349",
        CALLS_TURN_SECRET="s3cret",
    )
    assert loaded["CALLS_MAX_PARTICIPANTS"] == 4
    assert loaded["CALLS_RATE_LIMIT"] == 7
    assert loaded["CALLS_ICE_SERVERS"] == [{"urls": "stun:stun.example.org:3478"}]
    assert loaded["CALLS_TURN_URLS"] == ["turn:a.example:3478", "turns:a.example:5349"]


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("CALLS_MAX_PARTICIPANTS", "many", "not an integer"),
        ("CALLS_MAX_PARTICIPANTS", "0", "at least 1"),
        ("CALLS_RATE_BURST", "1.5", "not an integer"),
        ("CALLS_PRESENCE_TTL_SECS", "-1", "at least"),
        ("CALLS_ICE_SERVERS", "{not json", "not valid JSON"),
        ("CALLS_ICE_SERVERS", '{"urls": "stun:x"}', "JSON list"),
        ("CALLS_ICE_SERVERS", '[{"url": "stun:x"}]', "RTCIceServer"),
        ("CALLS_TURN_URLS", "turn:x:3478", "CALLS_TURN_SECRET"),
        ("DEBUG", "maybe", "not a boolean"),
        ("CALLS_METRICS_ALLOWED_IPS", "10.0.0.0/8,localhost", "not an IP address"),
        ("CALLS_TRUSTED_PROXIES", "proxy.internal", "not an IP address"),
        ("CALLS_TRUSTED_PROXIES", "10.0.0.0/8", "not an IP address"),
        ("REDIS_CHANNEL_LAYER", "rabbit", "use one of"),
        ("CALLS_SOCKETIO_PING_INTERVAL_SECS", "0", "at least 1"),
        ("CALLS_SOCKETIO_PING_TIMEOUT_SECS", "soon", "not an integer"),
    ],
)
def test_a_bad_value_raises_improperly_configured(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match=says):
        load_settings(monkeypatch, **{name: value})


def test_production_requires_a_secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SECRET_KEY")
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY"):
        load_settings(monkeypatch, SECRET_KEY="")


def test_the_channel_layer_follows_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(monkeypatch)["CHANNEL_LAYERS"]["default"]["BACKEND"].endswith("InMemoryChannelLayer")
    redis = load_settings(monkeypatch, REDIS_URL="redis://127.0.0.1:6379/0")["CHANNEL_LAYERS"]["default"]
    assert redis["BACKEND"].endswith("RedisPubSubChannelLayer")
    assert redis["CONFIG"]["hosts"][0]["address"] == "redis://127.0.0.1:6379/0"
    assert redis["CONFIG"]["hosts"][0]["socket_timeout"] is None


def test_redis_channel_layer_picks_the_core_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"REDIS_URL": "redis://127.0.0.1:6379/0", "REDIS_CHANNEL_LAYER": "core"}
    layer = load_settings(monkeypatch, **env)["CHANNEL_LAYERS"]["default"]
    assert layer["BACKEND"] == "channels_redis.core.RedisChannelLayer"


def test_the_database_follows_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(monkeypatch)["DATABASES"]["default"]["ENGINE"] == "django.db.backends.sqlite3"
    db = load_settings(monkeypatch, DATABASE_URL="postgres://u:p@127.0.0.1:5432/calls")["DATABASES"]["default"]
    assert (db["ENGINE"], db["NAME"], db["HOST"]) == ("django.db.backends.postgresql", "calls", "127.0.0.1")
