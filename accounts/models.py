from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """A user of the chat product; ``display_name`` is what call tiles show."""

    display_name = models.CharField(max_length=150, blank=True)

    @property
    def shown_name(self) -> str:
        """The name to show other participants: the display name, else the username."""
        return self.display_name or self.username
