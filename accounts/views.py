from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import AuthenticationFailed, PermissionDenied, Throttled
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.serializers import TokenObtainPairSerializer
from rest_framework_simplejwt.tokens import Token
from rest_framework_simplejwt.views import TokenObtainPairView

from accounts.serializers import MeSerializer
from accounts.throttle import get_login_throttle, request_client_address
from accounts.tickets import Ticket, get_ticket_store
from accounts.websocket import session_expires_at


class MeView(APIView):
    """The authenticated caller: ``id`` is the ``userId`` used in signaling."""

    @extend_schema(
        operation_id="auth_me",
        responses={200: MeSerializer, 401: OpenApiResponse(description="No credential, or an invalid one")},
    )
    def get(self, request: Request) -> Response:
        return Response(MeSerializer(request.user).data)


class LoginThrottled(Throttled):
    def __init__(self, wait: float) -> None:
        seconds = max(1, int(wait))
        unit = "second" if seconds == 1 else "seconds"
        super().__init__(
            detail=f"Too many failed logins from this address or for this username; try again in {seconds} {unit}."
        )
        self.wait = seconds  # DRF's exception handler sends it as Retry-After


class ThrottledTokenObtainPairView(TokenObtainPairView):
    """simplejwt's ``POST /api/auth/token/``, with failed logins throttled per client
    address and per username (``accounts.throttle``): past a limit it answers 429 with
    ``Retry-After`` before the password is looked at."""

    @extend_schema(
        operation_id="auth_token",
        description="An access and a refresh token for a username and password. Failed logins are throttled "
        "per client address and per username: past a limit, 429 with `Retry-After` (docs/protocol.md §11).",
        responses={
            200: TokenObtainPairSerializer,
            400: OpenApiResponse(description="A field is missing"),
            401: OpenApiResponse(description="A wrong username or password, or an inactive user"),
            429: OpenApiResponse(description="Too many failed logins; `Retry-After` says how many seconds to wait"),
        },
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = request.data
        username = data.get(get_user_model().USERNAME_FIELD) if isinstance(data, Mapping) else None
        attempt = get_login_throttle().begin(
            request_client_address(request), username if isinstance(username, str) and username else None
        )
        if attempt.refused:
            raise LoginThrottled(attempt.retry_after)
        try:
            response = super().post(request, *args, **kwargs)
        except AuthenticationFailed:
            attempt.failed()
            raise
        except Exception:
            attempt.abandoned()
            raise
        if response.status_code == 200:
            attempt.succeeded()
        else:
            attempt.abandoned()
        return response


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
