from __future__ import annotations

from django.conf import settings
from django.db import models


class Group(models.Model):
    """A chat group of the product; a call room may be linked to one."""

    name = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="chat_groups")

    class Meta:
        ordering = ("name", "id")
        # Told apart from django.contrib.auth's "Groups" (permissions) in the admin.
        verbose_name = "chat group"
        verbose_name_plural = "chat groups"

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner"
        ADMIN = "admin"
        MEMBER = "member"

    group = models.ForeignKey(Group, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    joined_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=("user", "group"), name="unique_membership")]

    def __str__(self) -> str:
        return f"{self.user} in {self.group} ({self.role})"
