"""Tests that front ends on another origin get CORS headers for the token endpoint and the
static client, from the origins of ``CORS_ALLOWED_ORIGINS`` (by default the websocket's)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, override_settings

from accounts.models import User
from tests.conftest import PASSWORD

SETTINGS_FILE = Path(__file__).resolve().parents[2] / "config" / "settings.py"
FRONT_END = "http://localhost:5173"
FOREIGN = "https://evil.example"
allowed_front_end = override_settings(CORS_ALLOWED_ORIGINS=[FRONT_END], CORS_ALLOWED_ORIGIN_REGEXES=[])


def load_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict:
    for name in ("CORS_ALLOWED_ORIGINS", "CSRF_TRUSTED_ORIGINS", "ALLOWED_HOSTS", "REDIS_URL", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"SECRET_KEY": "x" * 50, "DEBUG": "0", **env}.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(SETTINGS_FILE))


def allows(loaded: dict, origin: str) -> bool:
    return origin in loaded["CORS_ALLOWED_ORIGINS"] or any(
        re.match(pattern, origin) for pattern in loaded["CORS_ALLOWED_ORIGIN_REGEXES"]
    )


def test_the_middleware_sits_above_whitenoise(monkeypatch: pytest.MonkeyPatch) -> None:
    middleware = load_settings(monkeypatch)["MIDDLEWARE"]
    assert middleware.index("corsheaders.middleware.CorsMiddleware") < middleware.index(
        "whitenoise.middleware.WhiteNoiseMiddleware"
    )


def test_by_default_the_websockets_full_origins_are_allowed_not_its_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_settings(
        monkeypatch,
        ALLOWED_HOSTS="chat.example.com",
        CSRF_TRUSTED_ORIGINS="https://chat.example.com,https://*.corp.example,HTTP://Dev.Example:8080,https://.b.example",
    )
    assert loaded["CORS_ALLOWED_ORIGINS"] == ["https://chat.example.com", "http://dev.example:8080"]
    for origin in ("https://corp.example", "https://a.b.corp.example", "https://b.example", "https://a.b.example"):
        assert allows(loaded, origin), origin
    for origin in (
        "http://chat.example.com",
        "https://chat.example.com:8443",
        "https://evilcorp.example",
        "https://ab.example",
    ):
        assert not allows(loaded, origin), origin
    assert not allows(loaded, "http://localhost:5173"), "loopback only in debug"
    assert not loaded.get("CORS_ALLOW_CREDENTIALS", False)


def test_debug_allows_any_port_of_the_loopback_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_settings(monkeypatch, DEBUG="1")
    for origin in ("http://localhost:5173", "http://127.0.0.1:3000", "http://[::1]:8080", "http://localhost"):
        assert allows(loaded, origin), origin
    for origin in ("http://localhost.evil.example", "https://evil.example", "http://127.0.0.1.evil.example:80"):
        assert not allows(loaded, origin), origin


def test_cors_allowed_origins_replaces_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"CSRF_TRUSTED_ORIGINS": "https://chat.example.com"}
    loaded = load_settings(monkeypatch, CORS_ALLOWED_ORIGINS=" https://app.example.com , http://localhost:5173", **env)
    assert loaded["CORS_ALLOWED_ORIGINS"] == ["https://app.example.com", "http://localhost:5173"]
    assert load_settings(monkeypatch, CORS_ALLOWED_ORIGINS="", **env)["CORS_ALLOWED_ORIGINS"] == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CORS_ALLOWED_ORIGINS", "chat.example.com"),
        ("CORS_ALLOWED_ORIGINS", "https://chat.example.com/"),
        ("CORS_ALLOWED_ORIGINS", "https://chat.example.com/app"),
        ("CORS_ALLOWED_ORIGINS", "ftp://chat.example.com"),
        ("CORS_ALLOWED_ORIGINS", "https://chat.example.com:port"),
        ("CORS_ALLOWED_ORIGINS", "https://user@chat.example.com"),
        ("CSRF_TRUSTED_ORIGINS", "https://[::1"),
    ],
)
def test_a_value_that_is_not_an_origin_is_refused_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match=f"in {name} is not an origin"):
        load_settings(monkeypatch, **{name: value})


@pytest.fixture
def client() -> Client:
    return Client()


@allowed_front_end
def test_a_preflight_from_an_allowed_origin_allows_post_with_authorization(client: Client) -> None:
    response = client.options(
        "/api/auth/token/",
        headers={
            "Origin": FRONT_END,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == FRONT_END
    assert "POST" in response["Access-Control-Allow-Methods"]
    allowed_headers = {name.strip() for name in response["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed_headers
    assert "Access-Control-Allow-Credentials" not in response


@allowed_front_end
@pytest.mark.django_db
def test_a_token_can_be_obtained_from_an_allowed_origin(client: Client, alice: User) -> None:
    response = client.post(
        "/api/auth/token/",
        {"username": "alice", "password": PASSWORD},
        "application/json",
        headers={"Origin": FRONT_END},
    )
    assert response.status_code == 200
    assert response.json()["access"]
    assert response["Access-Control-Allow-Origin"] == FRONT_END
    assert "origin" in response["Vary"].lower()


@allowed_front_end
@pytest.mark.django_db
def test_a_foreign_origin_gets_no_cors_headers(client: Client, alice: User) -> None:
    preflight = client.options("/api/auth/token/", headers={"Origin": FOREIGN, "Access-Control-Request-Method": "POST"})
    post = client.post(
        "/api/auth/token/", {"username": "alice", "password": PASSWORD}, "application/json", headers={"Origin": FOREIGN}
    )
    for response in (preflight, post):
        assert not [name for name in response.headers if name.lower().startswith("access-control-")]


@allowed_front_end
def test_signaling_js_carries_the_allowed_origin_through_whitenoise(client: Client) -> None:
    response = client.get("/static/calls/signaling.js", headers={"Origin": FRONT_END})
    assert response.status_code == 200
    assert b"".join(response.streaming_content)
    assert response["Access-Control-Allow-Origin"] == FRONT_END
    assert "origin" in response["Vary"].lower()


@allowed_front_end
def test_static_files_stay_public_for_other_origins(client: Client) -> None:
    response = client.get("/static/calls/signaling.js", headers={"Origin": FOREIGN})
    b"".join(response.streaming_content)
    assert response["Access-Control-Allow-Origin"] == "*"  # WhiteNoise's own: the file is public


@allowed_front_end
async def test_the_headers_are_the_same_under_asgi(async_client: Any) -> None:
    static = await async_client.get("/static/calls/signaling.js", headers={"Origin": FRONT_END})
    preflight = await async_client.options(
        "/api/auth/token/", headers={"Origin": FRONT_END, "Access-Control-Request-Method": "POST"}
    )
    for response in (static, preflight):
        assert response["Access-Control-Allow-Origin"] == FRONT_END
