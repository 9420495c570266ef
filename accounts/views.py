from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.contrib.auth import get_user_model
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.exceptions import AuthenticationFailed, Throttled
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.serializers import TokenObtainPairSerializer
from rest_framework_simplejwt.views import TokenObtainPairView

from accounts.serializers import MeSerializer
from calls.auth.throttle import get_login_throttle, request_client_address


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
    address and per username (``calls.auth.throttle``): past a limit it answers 429 with
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
