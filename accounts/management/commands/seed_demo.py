"""Create the demo users and group; running it again changes nothing."""

from __future__ import annotations

from functools import cache
from typing import Any

from django.contrib.auth.hashers import make_password
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from accounts.models import User
from groups.models import Group, Membership

DEMO_PASSWORD = "demo-pass-123"  # noqa: S105 - documented demo credential
DEMO_USERS = [
    ("alice", "Alice Liddell", Membership.Role.OWNER),
    ("bob", "Bob Builder", Membership.Role.MEMBER),
    ("carol", "Carol Danvers", Membership.Role.MEMBER),
]
OUTSIDER = ("dave", "Dave Outsider")
DEMO_GROUP = "Demo team"
ADMIN = "admin"


class Command(BaseCommand):
    help = (
        f"Create demo users (alice, bob, carol in '{DEMO_GROUP}'; dave outside it; staff 'admin'), "
        f"password {DEMO_PASSWORD}."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--migrate", action="store_true", help="apply the migrations first (make run: one start-up instead of two)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["migrate"]:
            call_command("migrate", interactive=False, verbosity=options["verbosity"])
        self._seed()

    @transaction.atomic
    def _seed(self) -> None:
        group, _ = Group.objects.get_or_create(name=DEMO_GROUP)
        for username, display_name, role in DEMO_USERS:
            user = self._user(username, display_name)
            Membership.objects.get_or_create(user=user, group=group, defaults={"role": role})
        self._user(*OUTSIDER)
        admin = self._user(ADMIN, "Operator")
        if not admin.is_superuser:
            admin.is_staff = admin.is_superuser = True
            admin.save(update_fields=["is_staff", "is_superuser"])
        self.stdout.write(f"Demo users ready (password {DEMO_PASSWORD}); group '{group.name}' has id {group.pk}.")

    def _user(self, username: str, display_name: str) -> User:
        user, created = User.objects.get_or_create(username=username, defaults={"display_name": display_name})
        if created:
            user.password = _demo_password_hash()
            user.save(update_fields=["password"])
        return user


@cache
def _demo_password_hash() -> str:
    """One hash for every demo user: each is a second of CPU, most of a first ``make run``'s
    seeding."""
    return make_password(DEMO_PASSWORD)
