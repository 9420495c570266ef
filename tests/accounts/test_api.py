"""Tests that the token endpoints and ``/api/auth/me/`` work as docs/protocol.md §2 says."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.models import User
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def obtain(client: Client, username: str, password: str = PASSWORD) -> dict:
    response = client.post("/api/auth/token/", {"username": username, "password": password}, "application/json")
    return {"status": response.status_code, **response.json()}


def test_it_issues_an_access_and_a_refresh_token(client: Client, alice: User) -> None:
    tokens = obtain(client, "alice")
    assert tokens["status"] == 200
    assert tokens["access"] and tokens["refresh"]


def test_it_refuses_a_wrong_password(client: Client, alice: User) -> None:
    assert obtain(client, "alice", "wrong")["status"] == 401


def test_it_refuses_an_inactive_user(client: Client, alice: User) -> None:
    alice.is_active = False
    alice.save()
    assert obtain(client, "alice")["status"] == 401


def test_it_refreshes_an_access_token(client: Client, alice: User) -> None:
    refresh = obtain(client, "alice")["refresh"]
    response = client.post("/api/auth/token/refresh/", {"refresh": refresh}, "application/json")
    assert response.status_code == 200
    assert response.json()["access"]


def test_it_refuses_an_access_token_as_refresh_token(client: Client, alice: User) -> None:
    access = obtain(client, "alice")["access"]
    response = client.post("/api/auth/token/refresh/", {"refresh": access}, "application/json")
    assert response.status_code == 401


def test_me_describes_the_caller(client: Client, alice: User) -> None:
    access = obtain(client, "alice")["access"]
    response = client.get("/api/auth/me/", headers={"Authorization": f"Bearer {access}"})
    assert response.status_code == 200
    assert response.json() == {
        "id": str(alice.pk),
        "username": "alice",
        "displayName": "Alice A.",
        "email": "",
        "isStaff": False,
    }


def test_me_shows_the_username_when_there_is_no_display_name(client: Client, carol: User) -> None:
    client.force_login(carol)
    assert client.get("/api/auth/me/").json()["displayName"] == "carol"


def test_me_requires_authentication(client: Client, db: None) -> None:
    assert client.get("/api/auth/me/").status_code == 401
