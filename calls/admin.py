"""Read-only audit of call history: operators look, nobody edits."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
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
    list_display = (
        "room_id",
        "live",
        "call_type",
        "group",
        "created_by",
        "started_at",
        "length",
        "participant_count",
        "peak_participants",
    )
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
        return super().get_queryset(request).annotate(_participants=Count("participants", distinct=True))

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        results, _ = super().get_search_results(request, queryset, search_term)
        return results.distinct(), False

    @admin.display(boolean=True, description="live", ordering="ended_at")
    def live(self, obj: CallRoom) -> bool:
        return obj.is_live

    @admin.display(description="duration")
    def length(self, obj: CallRoom) -> str:
        return _format_duration(obj.duration)

    @admin.display(description="participants", ordering="_participants")
    def participant_count(self, obj: CallRoom) -> int:
        return obj._participants  # type: ignore[attr-defined]
