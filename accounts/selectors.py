"""Read-only questions about users."""

from __future__ import annotations

from accounts.models import User


def display_name(user: User) -> str:
    """The name other participants see (the calls app's CALLS_DISPLAY_NAME): the display
    name, else the username."""
    return user.shown_name
