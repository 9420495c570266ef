"""Read-only audit of call history: operators look, nobody edits."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import admin
from django.db.models import Count, Prefetch, QuerySet
from django.http import HttpRequest

from calls.models import CallParticipant, CallRoom


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
    fields = ("user", "socket_id", "joined_at", "left_at", "stay", "leave_reason")
    readonly_fields = fields

    @admin.display(description="duration")
    def stay(self, obj: CallParticipant) -> str:
        return _format_duration(obj.duration)


@admin.register(CallRoom)
class CallRoomAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    # Seven narrow columns fit a 1280 px screen; what tells two sessions of one room
    # apart is when (to the second), in which group, and who was in them.
    list_display = ("room_id", "group_name", "started", "length", "who", "peak_participants", "live")
    list_filter = (LiveFilter, "call_type", "group", "started_at")
    search_fields = ("room_id", "participants__user__username", "created_by__username")
    date_hierarchy = "started_at"
    list_select_related = ("group", "created_by")
    inlines = (CallParticipantInline,)
    readonly_fields = (
        "room_id",
        "session_id",
        "call_type",
        "group",
        "created_by",
        "metadata",
        "started_at",
        "ended_at",
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

    @admin.display(description="group", ordering="group__name")
    def group_name(self, obj: CallRoom) -> str:
        return obj.group.name if obj.group else "—"

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


def _person(participant: CallParticipant) -> str:
    return participant.user.shown_name if participant.user else "(deleted user)"
