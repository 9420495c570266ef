"""Tests that the groups API shows a user their groups and nobody else's."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.models import User
from groups.models import Group, Membership
from groups.selectors import group_ids_of_user, group_is_member

pytestmark = pytest.mark.django_db


def test_it_lists_the_callers_groups(client: Client, alice: User, team: Group) -> None:
    Group.objects.create(name="Elsewhere")
    client.force_login(alice)
    assert client.get("/api/groups/").json() == [{"id": str(team.pk), "name": "Team"}]


def test_a_member_sees_the_group_with_its_members(client: Client, bob: User, team: Group) -> None:
    client.force_login(bob)
    body = client.get(f"/api/groups/{team.pk}/").json()
    assert body["id"] == str(team.pk)
    assert [(m["username"], m["role"]) for m in body["members"]] == [
        ("alice", "owner"),
        ("bob", "member"),
        ("carol", "member"),
    ]
    assert body["members"][0] == {
        "userId": str(team.memberships.first().user_id),
        "username": "alice",
        "displayName": "Alice A.",
        "role": "owner",
    }


def test_a_non_member_gets_404(client: Client, dave: User, team: Group) -> None:
    client.force_login(dave)
    assert client.get(f"/api/groups/{team.pk}/").status_code == 404


def test_a_missing_group_gets_404(client: Client, alice: User) -> None:
    client.force_login(alice)
    assert client.get("/api/groups/999999/").status_code == 404


def test_the_groups_api_requires_authentication(client: Client, team: Group) -> None:
    assert client.get("/api/groups/").status_code == 401


def test_the_membership_selector(alice: User, dave: User, team: Group) -> None:
    assert group_is_member(user_id=alice.pk, group_id=team.pk)
    assert not group_is_member(user_id=dave.pk, group_id=team.pk)
    assert group_ids_of_user(user_id=alice.pk) == frozenset({str(team.pk)})


def test_a_user_is_a_member_of_a_group_once(alice: User, team: Group) -> None:
    from django.db import IntegrityError

    with pytest.raises(IntegrityError):
        Membership.objects.create(group=team, user=alice)
