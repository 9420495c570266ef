"""Tests that the demo data command is idempotent."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from accounts.management.commands.seed_demo import DEMO_GROUP, DEMO_PASSWORD
from accounts.models import User
from groups.models import Group, Membership

pytestmark = pytest.mark.django_db


def test_it_creates_the_demo_users_and_group_once() -> None:
    call_command("seed_demo")
    call_command("seed_demo")
    group = Group.objects.get(name=DEMO_GROUP)
    members = set(Membership.objects.filter(group=group).values_list("user__username", flat=True))
    assert members == {"alice", "bob", "carol"}
    assert User.objects.count() == 5
    assert all(user.check_password(DEMO_PASSWORD) for user in User.objects.all())
    assert not Membership.objects.filter(user__username="dave").exists()
    assert User.objects.get(username="admin").is_staff
