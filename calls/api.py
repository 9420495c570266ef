"""The HTTP API for calls (docs/protocol.md §11): the live rooms the caller may see, the
caller's call history, and one session of it; and what the OpenAPI schema says of the
plain Django views under ``/api/``.

Who sees what: a session of one of the caller's groups, or one the caller took part in.
Anything else answers as if it did not exist (404 for one session, absent from lists).
The live rooms come from presence, which every process shares, with the database's open
sessions as the index of which rooms to ask about: a room is live when presence holds a
session with the database row's ``session_id``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db.models import Prefetch, Q, QuerySet
from django.urls import reverse
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import generics, serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import APIException, PermissionDenied
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.tokens import Token

from calls import host, process
from calls.auth.tickets import Ticket, get_ticket_store
from calls.auth.websocket import session_expires_at
from calls.models import CallParticipant, CallRing, CallRoom
from calls.presence.base import PresenceUnavailable, room_key

HISTORY_PAGE_SIZE = 20


# ---------------------------------------------------------------------------
# Fields
# ---------------------------------------------------------------------------


class UtcTimeField(serializers.DateTimeField):
    """A time as the protocol writes it: ISO 8601 UTC with milliseconds, as JavaScript's
    ``toISOString()`` (``"2026-11-26T08:00:00.000Z"``). A string is passed on as it is
    (presence keeps its times in that form)."""

    def to_representation(self, value: dt.datetime | str) -> str:
        if isinstance(value, str):
            return value
        return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@extend_schema_field({"type": "number", "format": "double", "nullable": True, "example": 754.2})
class SecondsField(serializers.Field):
    """A duration in seconds (to the millisecond); null while it is not over."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(read_only=True, allow_null=True, **kwargs)

    def to_representation(self, value: dt.timedelta) -> float:
        return round(value.total_seconds(), 3)


class OptionalChoiceField(serializers.ChoiceField):
    """A choice the database keeps as ``""`` while there is none, shown as null."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(read_only=True, allow_null=True, **kwargs)

    def get_attribute(self, instance: Any) -> Any:
        return super().get_attribute(instance) or None


# ---------------------------------------------------------------------------
# Serializers
# ---------------------------------------------------------------------------


class DetailSerializer(serializers.Serializer):
    """An error: DRF's ``{"detail": "…"}``."""

    detail = serializers.CharField()


class DisplayNameField(serializers.CharField):
    """A user's name as other participants see it (``CALLS_DISPLAY_NAME``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(source="*", read_only=True, **kwargs)

    def to_representation(self, value: Any) -> str:
        return host.display_name(value)


class UserRefSerializer(serializers.Serializer):
    """A user: ``userId`` is the signaling ``userId``."""

    userId = serializers.CharField(source="pk")
    username = serializers.CharField(source="get_username")
    displayName = DisplayNameField()


class MediaSerializer(serializers.Serializer):
    """What a participant sends (docs/protocol.md §5 rule 11)."""

    audio = serializers.BooleanField()
    video = serializers.BooleanField()
    screen = serializers.BooleanField()


class LiveParticipantSerializer(serializers.Serializer):
    """A participant object of docs/protocol.md §4."""

    socketId = serializers.CharField()
    userId = serializers.CharField()
    username = serializers.CharField()
    displayName = serializers.CharField()
    joinedAt = UtcTimeField()
    media = MediaSerializer()


class LiveCallSerializer(serializers.Serializer):
    """A live room: its session as presence holds it, with everyone in it, oldest first."""

    sessionId = serializers.CharField(help_text="The session's id in the history: GET /api/calls/<sessionId>/")
    callRoomId = serializers.CharField()
    groupId = serializers.CharField(allow_null=True, help_text="The room's group, or null for a room without one")
    callType = serializers.ChoiceField(choices=CallRoom.CallType.choices)
    startedAt = UtcTimeField()
    locked = serializers.BooleanField(help_text="Whether a moderator locked the room (docs/protocol.md §10)")
    participants = LiveParticipantSerializer(many=True)


class CallSummarySerializer(serializers.Serializer):
    """One session of a call room, from its first join until its last participant left."""

    sessionId = serializers.CharField(source="session_id")
    callRoomId = serializers.CharField(source="room_id")
    groupId = serializers.CharField(source="group_id", allow_null=True)
    callType = serializers.ChoiceField(source="call_type", choices=CallRoom.CallType.choices)
    live = serializers.BooleanField(source="is_live", help_text="Whether the session has not ended")
    startedAt = UtcTimeField(source="started_at")
    endedAt = UtcTimeField(source="ended_at", allow_null=True)
    durationSecs = SecondsField(source="duration")
    createdBy = UserRefSerializer(source="created_by", allow_null=True, help_text="Null for a deleted user")
    endedBy = UserRefSerializer(
        source="ended_by",
        allow_null=True,
        help_text="The moderator who ended the call for everyone (webrtc:end-call), if one did",
    )
    peakParticipants = serializers.IntegerField(source="peak_participants")


class CallStaySerializer(serializers.Serializer):
    """One connection's stay in the session."""

    user = UserRefSerializer(allow_null=True, help_text="Null for a deleted user")
    socketId = serializers.CharField(source="socket_id")
    joinedAt = UtcTimeField(source="joined_at")
    leftAt = UtcTimeField(source="left_at", allow_null=True)
    durationSecs = SecondsField(source="duration")
    leaveReason = OptionalChoiceField(
        source="leave_reason",
        choices=CallParticipant.LeaveReason.choices,
        help_text="Why it left (docs/protocol.md §4); null while it is in the call",
    )
    resumes = serializers.IntegerField(help_text="Times its connection dropped and resumed (docs/protocol.md §6)")
    mediaChanges = serializers.IntegerField(
        source="media_changes", help_text="Times it changed its media state (webrtc:media-state)"
    )


class CallRingSerializer(serializers.Serializer):
    """One callee's ring of a ``webrtc:ring`` (docs/protocol.md §9)."""

    ringId = serializers.CharField(source="ring_id")
    callee = UserRefSerializer(allow_null=True, help_text="Null for a deleted user")
    ringer = UserRefSerializer(allow_null=True, help_text="Null for a deleted user")
    outcome = OptionalChoiceField(choices=CallRing.Outcome.choices, help_text="Null while the callee is being rung")
    startedAt = UtcTimeField(source="started_at")
    expiresAt = UtcTimeField(source="expires_at")
    endedAt = UtcTimeField(source="ended_at", allow_null=True)


class CallDetailSerializer(CallSummarySerializer):
    """One session with its participants and rings. The relayed counts are the session's
    (the server counts them per room, not per participant)."""

    metadata = serializers.DictField(help_text="The room metadata of docs/protocol.md §4")
    offersRelayed = serializers.IntegerField(source="offers_relayed")
    answersRelayed = serializers.IntegerField(source="answers_relayed")
    candidatesRelayed = serializers.IntegerField(source="candidates_relayed")
    participants = CallStaySerializer(many=True, help_text="Every stay, in join order")
    rings = CallRingSerializer(many=True, help_text="Every callee rung for the session, in ring order")


class CallHistoryQuerySerializer(serializers.Serializer):
    """The filters of ``GET /api/calls/``."""

    group = serializers.IntegerField(required=False, min_value=1, help_text="Only the sessions of this group")
    since = serializers.CharField(
        required=False,
        help_text="Only sessions started at or after this time: an ISO 8601 date (2026-11-26, from its start, UTC) "
        "or date and time (2026-11-26T08:00:00Z; without an offset, UTC)",
    )
    until = serializers.CharField(
        required=False,
        help_text="Only sessions started at or before this time: an ISO 8601 date (2026-11-26, to its end, UTC) "
        "or date and time (without an offset, UTC)",
    )

    def validate_since(self, value: str) -> dt.datetime:
        return _parse_bound(value, end_of_day=False)

    def validate_until(self, value: str) -> dt.datetime:
        return _parse_bound(value, end_of_day=True)


def _parse_bound(value: str, *, end_of_day: bool) -> dt.datetime:
    """A time filter, inclusive: a date stands for its first microsecond (or, for
    ``until``, its last: times are kept to the microsecond); a time without an offset
    is UTC."""
    try:
        day = parse_date(value)
        moment = None if day is not None else parse_datetime(value)
    except ValueError:  # well-formed but impossible: 2026-02-30, 25:00
        day = moment = None
    if day is not None:
        start = dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)
        return start + dt.timedelta(days=1, microseconds=-1) if end_of_day else start
    if moment is None:
        raise serializers.ValidationError("Give an ISO 8601 date (2026-11-26) or date and time (2026-11-26T08:00:00Z).")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


# ---------------------------------------------------------------------------
# Who sees what
# ---------------------------------------------------------------------------


def visible_calls(*, user_id: str) -> QuerySet[CallRoom]:
    """The sessions a user may see: those of its groups, and those it took part in."""
    groups = host.group_ids_of_user(user_id)
    took_part = CallParticipant.objects.filter(user_id=user_id).values("call_id")
    return CallRoom.objects.filter(Q(group_id__in=groups) | Q(pk__in=took_part))


@dataclass(frozen=True, slots=True)
class _OpenSession:
    session_id: str
    room_id: str
    group_id: str | None


def _open_sessions_for(*, user_id: str) -> list[_OpenSession]:
    """The sessions the database shows open that the user might see live: its groups',
    and ungrouped ones it created or joined (presence then says whether it is in them)."""
    groups = host.group_ids_of_user(user_id)
    joined = CallParticipant.objects.filter(user_id=user_id).values("call_id")
    rows = (
        CallRoom.objects.filter(ended_at__isnull=True)
        .filter(Q(group_id__in=groups) | (Q(group__isnull=True) & (Q(created_by_id=user_id) | Q(pk__in=joined))))
        .values_list("session_id", "room_id", "group_id")
    )
    return [_OpenSession(sid, room, None if group is None else str(group)) for sid, room, group in rows]


async def _live_rooms(sessions: list[_OpenSession], *, user_id: str) -> list[dict[str, Any]]:
    """Of these sessions, those presence holds live, as the API shows them."""
    presence = process.current().presence

    async def live(candidate: _OpenSession) -> dict[str, Any] | None:
        key = room_key(candidate.room_id, candidate.group_id)
        session = await presence.session(room_key=key)
        if session is None or session.session_id != candidate.session_id:
            return None  # ended (its end not yet written, or lost with a process), or another session now
        members, locked = await asyncio.gather(presence.members(room_key=key), presence.locked(room_key=key))
        if not members or await presence.session(room_key=key) != session:
            return None  # it ended while we looked
        participants = [member.participant for member in members]
        if candidate.group_id is None and user_id != str(session.metadata.get("createdBy")):
            if all(participant.user_id != user_id for participant in participants):
                return None  # a room without a group is the caller's only while it is in it
        return {
            "sessionId": session.session_id,
            "callRoomId": session.room_id,
            "groupId": session.group_id,
            "callType": session.metadata.get("callType", CallRoom.CallType.VIDEO),
            "startedAt": session.metadata["createdAt"],
            "locked": locked,
            "participants": [participant.wire() for participant in participants],
        }

    rooms = [room for room in await asyncio.gather(*map(live, sessions)) if room is not None]
    return sorted(rooms, key=lambda room: (room["startedAt"], room["sessionId"]), reverse=True)


class PresenceUnavailableError(APIException):
    status_code = 503
    default_detail = "The live state of calls cannot be read right now; try again in a moment."
    default_code = "presence-unavailable"


def _user_id(request: Request) -> str:
    """The authenticated caller's primary key (the views require authentication)."""
    assert request.user.pk is not None
    return str(request.user.pk)


UNAUTHENTICATED = OpenApiResponse(DetailSerializer, description="No credential, or an invalid or expired one")


# ---------------------------------------------------------------------------
# Views
# ---------------------------------------------------------------------------


class LiveCallsView(APIView):
    """The live rooms of the caller's groups, and those without a group that the caller
    is in or created, newest first, with everyone in them as presence holds them (on
    every process sharing it)."""

    @extend_schema(
        operation_id="calls_live",
        responses={
            200: LiveCallSerializer(many=True),
            401: UNAUTHENTICATED,
            503: OpenApiResponse(DetailSerializer, description="Presence (Redis) cannot be reached"),
        },
    )
    def get(self, request: Request) -> Response:
        user_id = _user_id(request)
        try:
            rooms = async_to_sync(_live_rooms)(_open_sessions_for(user_id=user_id), user_id=user_id)
        except PresenceUnavailable:
            raise PresenceUnavailableError from None
        return Response(LiveCallSerializer(rooms, many=True).data)


class CallHistoryPagination(PageNumberPagination):
    page_size = HISTORY_PAGE_SIZE


class CallHistoryView(generics.ListAPIView[CallRoom]):
    """The caller's call history, newest first: the sessions of the caller's groups and
    those the caller took part in, live ones included."""

    serializer_class = CallSummarySerializer
    pagination_class = CallHistoryPagination
    queryset = CallRoom.objects.none()  # for the schema; get_queryset is what the caller sees

    @extend_schema(
        operation_id="calls_history",
        parameters=[CallHistoryQuerySerializer],
        responses={
            200: CallSummarySerializer(many=True),
            400: OpenApiResponse(description="A filter that is not valid: `{filter: [message]}`"),
            401: UNAUTHENTICATED,
            404: OpenApiResponse(DetailSerializer, description="A page past the last"),
        },
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[CallRoom]:
        query = CallHistoryQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        filters = query.validated_data
        calls = visible_calls(user_id=_user_id(self.request))
        if "group" in filters:
            calls = calls.filter(group_id=filters["group"])
        if "since" in filters:
            calls = calls.filter(started_at__gte=filters["since"])
        if "until" in filters:
            calls = calls.filter(started_at__lte=filters["until"])
        return calls.select_related("created_by", "ended_by").order_by("-started_at", "-id")


class CallDetailView(generics.RetrieveAPIView[CallRoom]):
    """One session of the caller's history: its participants and its rings. 404 for a
    session the caller could not list, as for one that does not exist."""

    serializer_class = CallDetailSerializer
    lookup_field = "session_id"
    queryset = CallRoom.objects.none()  # for the schema; get_queryset is what the caller sees

    @extend_schema(
        operation_id="calls_detail",
        responses={
            200: CallDetailSerializer,
            401: UNAUTHENTICATED,
            404: OpenApiResponse(DetailSerializer, description="No such session, or not one the caller may see"),
        },
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[CallRoom]:
        return (
            visible_calls(user_id=_user_id(self.request))
            .select_related("created_by", "ended_by")
            .prefetch_related(
                Prefetch("participants", CallParticipant.objects.select_related("user")),
                Prefetch("rings", CallRing.objects.select_related("callee", "ringer")),
            )
        )


# ---------------------------------------------------------------------------
# The OpenAPI schema of the plain Django views
# ---------------------------------------------------------------------------


def _plain_operation(operation_id: str, tag: str, description: str, content: dict[str, Any]) -> dict[str, Any]:
    return {
        "get": {
            "operationId": operation_id,
            "description": description,
            "tags": [tag],
            "security": [],  # no authentication
            "responses": {"200": {"description": "", "content": content}},
        }
    }


def document_plain_views(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """A postprocessing hook (``SPECTACULAR_SETTINGS``): the views under ``/api/`` that
    drf-spectacular leaves out, added to the schema: the plain Django views, which it
    cannot see, and its own two (tests/test_openapi.py checks that no path is missing)."""
    paths = result.setdefault("paths", {})
    paths[reverse("origin-check")] = _plain_operation(
        "calls_origin_check",
        "calls",
        "Whether the websocket accepts this request's `Origin` (a browser sees a refused handshake only as "
        "a close 1006 before open). No authentication; `Access-Control-Allow-Origin: *`.",
        {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"allowed": {"type": "boolean"}},
                    "required": ["allowed"],
                }
            }
        },
    )
    paths[reverse("asyncapi")] = _plain_operation(
        "asyncapi_document",
        "schema",
        "The signaling protocol (docs/protocol.md) as an AsyncAPI 3.0.0 document. No authentication.",
        {"application/json": {"schema": {"type": "object", "additionalProperties": {}}}},
    )
    paths[reverse("api-schema")] = _plain_operation(
        "api_schema",
        "schema",
        "This OpenAPI 3 schema: YAML, or JSON with `?format=json` (or `Accept: application/vnd.oai.openapi+json`). "
        "No authentication.",
        {
            media_type: {"schema": {"type": "object", "additionalProperties": {}}}
            for media_type in ("application/vnd.oai.openapi", "application/vnd.oai.openapi+json")
        },
    )
    paths[reverse("api-docs")] = _plain_operation(
        "api_docs",
        "schema",
        "This schema in Swagger UI, served with its own assets (no CDN).",
        {"text/html": {"schema": {"type": "string"}}},
    )
    result["paths"] = dict(sorted(paths.items()))
    return result


# ---------------------------------------------------------------------------
# Websocket tickets
# ---------------------------------------------------------------------------


class WsTicketSerializer(serializers.Serializer):
    """A websocket ticket: connect with ``/ws/calls/?ticket=TICKET`` within ``expiresIn``."""

    ticket = serializers.CharField()
    expiresIn = serializers.IntegerField(help_text="Seconds within which the ticket must be used")


class WsTicketView(APIView):
    """``POST /api/auth/ws-ticket/``: a single-use websocket ticket (docs/protocol.md §2) for
    the caller, carrying the expiry of the credential this request presented."""

    @extend_schema(
        operation_id="auth_ws_ticket",
        description="A single-use websocket ticket (docs/protocol.md §2) for the caller: connect with "
        "`/ws/calls/?ticket=TICKET` within `expiresIn` seconds. The connection's authentication lasts as long "
        "as the credential this request presented.",
        request=None,
        responses={
            200: WsTicketSerializer,
            401: OpenApiResponse(description="No credential, or an invalid one"),
            403: OpenApiResponse(description="A session request without its CSRF token"),
        },
    )
    def post(self, request: Request) -> Response:
        ttl = settings.CALLS_WS_TICKET_TTL_SECS
        ticket = get_ticket_store().issue(Ticket(str(request.user.pk), credential_expires_at(request)), ttl)
        return Response({"ticket": ticket, "expiresIn": ttl}, headers={"Cache-Control": "no-store"})


def credential_expires_at(request: Request) -> float | None:
    """When the credential of an authenticated request expires, as a Unix time: an access
    token's ``exp``, or the session's expiry."""
    if isinstance(request.auth, Token):
        expires_at = request.auth.get("exp")
        return float(expires_at) if expires_at is not None else None
    if isinstance(request.successful_authenticator, SessionAuthentication):
        return session_expires_at(request.session)
    raise PermissionDenied("Websocket tickets are issued for an access token or a session only.")
