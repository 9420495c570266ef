"""Read-only audit of call history: operators look, nobody edits."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db.models import Count, Prefetch, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from calls import host
from calls.models import CallParticipant, CallRing, CallRoom, ModerationAction

# The host's user model names its login field (docs/integration.md).
USERNAME = get_user_model().USERNAME_FIELD


def _format_duration(value: dt.timedelta | None) -> str:
    if value is None:
        return "—"
    seconds = int(value.total_seconds())
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ReadOnlyAdminMixin:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class LiveFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("live", "Live"), ("ended", "Ended")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[CallRoom]) -> QuerySet[CallRoom]:
        if self.value() == "live":
            return queryset.filter(ended_at__isnull=True)
        if self.value() == "ended":
            return queryset.filter(ended_at__isnull=False)
        return queryset


class CallParticipantInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = CallParticipant
    extra = 0
    fields = ("user", "socket_id", "joined_at", "left_at", "stay", "leave_reason", "media_changes", "resumes")
    readonly_fields = fields

    @admin.display(description="duration")
    def stay(self, obj: CallParticipant) -> str:
        return _format_duration(obj.duration)


class OutcomeFilter(admin.SimpleListFilter):
    """A ring's outcome, with "ringing" for the rings that have none yet."""

    title = "outcome"
    parameter_name = "outcome"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("ringing", "Ringing"), *((str(value), str(label)) for value, label in CallRing.Outcome.choices)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[CallRing]) -> QuerySet[CallRing]:
        value = self.value()
        if value == "ringing":
            return queryset.filter(outcome="")
        if value in CallRing.Outcome.values:
            return queryset.filter(outcome=value)
        return queryset


def _ring_status(ring: CallRing) -> str:
    return ring.get_outcome_display() if ring.outcome else "ringing"


class CallRingInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = CallRing
    extra = 0
    fields = ("callee", "ringer", "status", "started_at", "ended_at", "ring_id")
    readonly_fields = fields
    verbose_name = "ring"

    def get_queryset(self, request: HttpRequest) -> QuerySet[CallRing]:
        return super().get_queryset(request).select_related("callee", "ringer")

    @admin.display(description="outcome")
    def status(self, obj: CallRing) -> str:
        return _ring_status(obj)


class ModerationActionInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = ModerationAction
    extra = 0
    fields = ("at", "action", "actor", "target_user", "target_socket_id", "banned_until")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[ModerationAction]:
        return super().get_queryset(request).select_related("actor", "target_user")


@admin.register(CallRoom)
class CallRoomAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    # Seven narrow columns fit a 1280 px screen; what tells two sessions of one room
    # apart is when (to the second), in which group, and who was in them.
    list_display = ("room_id", "group_name", "started", "length", "who", "peak_participants", "live")
    list_filter = (
        LiveFilter,
        "call_type",
        "group",
        "started_at",
        ("participants__user", admin.RelatedOnlyFieldListFilter),
        "participants__leave_reason",
        "rings__outcome",
    )
    search_fields = ("room_id", f"participants__user__{USERNAME}", f"created_by__{USERNAME}")
    date_hierarchy = "started_at"
    list_select_related = ("group", "created_by")
    inlines = (CallParticipantInline, CallRingInline, ModerationActionInline)
    readonly_fields = (
        "room_id",
        "session_id",
        "call_type",
        "group",
        "created_by",
        "metadata",
        "started_at",
        "ended_at",
        "ended_by",
        "peak_participants",
        "offers_relayed",
        "answers_relayed",
        "candidates_relayed",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[CallRoom]:
        participants = Prefetch("participants", CallParticipant.objects.select_related("user"))
        return (
            super()
            .get_queryset(request)
            .annotate(_participants=Count("participants", distinct=True))
            .prefetch_related(participants)
        )

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        results, _ = super().get_search_results(request, queryset, search_term)
        return results.distinct(), False

    @admin.display(boolean=True, description="live", ordering="ended_at")
    def live(self, obj: CallRoom) -> bool:
        return obj.is_live

    @admin.display(description="duration")
    def length(self, obj: CallRoom) -> str:
        return _format_duration(obj.duration)

    @admin.display(description="group", ordering="group")
    def group_name(self, obj: CallRoom) -> str:
        return host.group_name(obj.group) if obj.group else "—"

    @admin.display(description="started (UTC)", ordering="started_at")
    def started(self, obj: CallRoom) -> str:
        return obj.started_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")

    @admin.display(description="participants", ordering="_participants")
    def who(self, obj: CallRoom) -> str:
        """The distinct people of the session, in order of arrival: at most
        ``NAMES_SHOWN``, then how many more."""
        names = list(dict.fromkeys(_person(p) for p in obj.participants.all()))
        shown = ", ".join(names[:NAMES_SHOWN])
        return f"{shown} +{len(names) - NAMES_SHOWN}" if len(names) > NAMES_SHOWN else shown or "—"


NAMES_SHOWN = 4


def _session_link(call: CallRoom) -> SafeString:
    """The room id, linking to its session's page."""
    return format_html('<a href="{}">{}</a>', reverse("admin:calls_callroom_change", args=[call.pk]), call.room_id)


def _utc(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "—"


@admin.register(CallRing)
class CallRingAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Every callee's ring, across sessions: who was rung, by whom, and how it ended."""

    list_display = ("callee", "ringer", "session", "status", "started", "ended")
    list_filter = (OutcomeFilter, "started_at")
    search_fields = ("ring_id", f"callee__{USERNAME}", f"ringer__{USERNAME}", "call__room_id")
    date_hierarchy = "started_at"
    list_select_related = ("call", "callee", "ringer")
    readonly_fields = ("call", "ring_id", "ringer", "callee", "started_at", "expires_at", "ended_at", "outcome")

    @admin.display(description="call", ordering="call__room_id")
    def session(self, obj: CallRing) -> SafeString:
        return _session_link(obj.call)

    @admin.display(description="outcome", ordering="outcome")
    def status(self, obj: CallRing) -> str:
        return _ring_status(obj)

    @admin.display(description="started (UTC)", ordering="started_at")
    def started(self, obj: CallRing) -> str:
        return _utc(obj.started_at)

    @admin.display(description="ended (UTC)", ordering="ended_at")
    def ended(self, obj: CallRing) -> str:
        return _utc(obj.ended_at)


@admin.register(ModerationAction)
class ModerationActionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Every kick, ban, end of a call, lock and unlock, across sessions."""

    list_display = ("when", "action", "actor", "target_user", "session", "banned_until")
    list_filter = ("action", "at")
    search_fields = (f"actor__{USERNAME}", f"target_user__{USERNAME}", "target_socket_id", "call__room_id")
    date_hierarchy = "at"
    list_select_related = ("call", "actor", "target_user")
    readonly_fields = ("call", "actor", "action", "target_user", "target_socket_id", "banned_until", "at")

    @admin.display(description="at (UTC)", ordering="at")
    def when(self, obj: ModerationAction) -> str:
        return _utc(obj.at)

    @admin.display(description="call", ordering="call__room_id")
    def session(self, obj: ModerationAction) -> SafeString:
        return _session_link(obj.call)


def _person(participant: CallParticipant) -> str:
    return host.display_name(participant.user) if participant.user else "(deleted user)"
