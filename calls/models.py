"""Call history for auditing. Live state is in presence; these rows are its record."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Coalesce

from calls.host import group_model_label


class CallRoom(models.Model):
    """One session of a call room: from its first join until its last participant left."""

    class CallType(models.TextChoices):
        AUDIO = "audio"
        VIDEO = "video"

    session_id = models.CharField(max_length=32, unique=True, editable=False)
    room_id = models.CharField(max_length=128, db_index=True)
    call_type = models.CharField(max_length=8, choices=CallType.choices)
    # The host's chat group model (calls/host.py); its primary key must be an integer,
    # as the protocol's groupId is (docs/protocol.md §4).
    group = models.ForeignKey(
        group_model_label(), null=True, blank=True, on_delete=models.SET_NULL, related_name="call_rooms"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="created_calls"
    )
    ended_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="ended_calls",
        help_text="The moderator who ended the call for everyone (webrtc:end-call), if one did",
    )
    metadata = models.JSONField(default=dict, blank=True)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True, db_index=True)
    peak_participants = models.PositiveIntegerField(default=0)
    offers_relayed = models.PositiveBigIntegerField(default=0)
    answers_relayed = models.PositiveBigIntegerField(default=0)
    candidates_relayed = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ("-started_at",)
        constraints = [
            # A room (its id within its group, or without one) has many sessions over
            # time, at most one live. Coalesce: NULL groups would never collide.
            models.UniqueConstraint(
                F("room_id"), Coalesce("group", 0), condition=Q(ended_at__isnull=True), name="one_live_session_per_room"
            )
        ]

    def __str__(self) -> str:
        return f"{self.room_id} @ {self.started_at:%Y-%m-%d %H:%M}"

    @property
    def is_live(self) -> bool:
        return self.ended_at is None

    @property
    def duration(self) -> dt.timedelta | None:
        return self.ended_at - self.started_at if self.ended_at else None


class CallParticipant(models.Model):
    """One connection's stay in a call session."""

    class LeaveReason(models.TextChoices):
        LEFT = "left"
        DISCONNECTED = "disconnected"
        SWITCHED_ROOM = "switched-room"
        LOST = "lost"
        REMOVED = "removed"
        KICKED = "kicked"
        CALL_ENDED = "call-ended"

    call = models.ForeignKey(CallRoom, on_delete=models.CASCADE, related_name="participants")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="calls")
    socket_id = models.CharField(max_length=64)
    joined_at = models.DateTimeField()
    left_at = models.DateTimeField(null=True, blank=True)
    leave_reason = models.CharField(max_length=16, choices=LeaveReason.choices, blank=True)
    resumes = models.PositiveIntegerField(default=0, help_text="Times the connection dropped and resumed")
    media_changes = models.PositiveIntegerField(default=0, help_text="Times the participant changed its media state")

    class Meta:
        ordering = ("joined_at", "id")
        constraints = [models.UniqueConstraint(fields=("call", "socket_id"), name="one_row_per_connection_and_call")]

    def __str__(self) -> str:
        return f"{self.user} in {self.call.room_id}"

    @property
    def duration(self) -> dt.timedelta | None:
        return self.left_at - self.joined_at if self.left_at else None


class CallRing(models.Model):
    """One callee's ring of a ``webrtc:ring`` (docs/protocol.md §9): one row per rung
    user, with how that user's ring ended."""

    class Outcome(models.TextChoices):
        ACCEPTED = "accepted"
        DECLINED = "declined"
        MISSED = "missed"
        CANCELLED = "cancelled"
        CALL_ENDED = "call-ended"

    call = models.ForeignKey(CallRoom, on_delete=models.CASCADE, related_name="rings")
    ring_id = models.CharField(max_length=64, db_index=True, help_text="The server-issued ringId")
    ringer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="rings_made"
    )
    callee = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="rings_received"
    )
    started_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(
        max_length=16, choices=Outcome.choices, blank=True, help_text="Blank while the callee is being rung"
    )

    class Meta:
        ordering = ("started_at", "id")
        constraints = [models.UniqueConstraint(fields=("ring_id", "callee"), name="one_row_per_ring_and_callee")]

    def __str__(self) -> str:
        return f"ring {self.ring_id} of {self.callee} in {self.call.room_id}"

    @property
    def is_ringing(self) -> bool:
        return self.outcome == ""


class ModerationAction(models.Model):
    """A moderator's kick, ban, end of the call, lock or unlock (docs/protocol.md §10)."""

    class Action(models.TextChoices):
        KICK = "kick"
        BAN = "ban"
        END_CALL = "end-call"
        LOCK = "lock"
        UNLOCK = "unlock"

    call = models.ForeignKey(CallRoom, on_delete=models.CASCADE, related_name="moderation_actions")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="moderation_actions"
    )
    action = models.CharField(max_length=16, choices=Action.choices)
    target_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="moderation_actions_against",
    )
    target_socket_id = models.CharField(max_length=64, blank=True)
    banned_until = models.DateTimeField(null=True, blank=True)
    at = models.DateTimeField()

    class Meta:
        ordering = ("at", "id")

    def __str__(self) -> str:
        return f"{self.action} by {self.actor} in {self.call.room_id}"
