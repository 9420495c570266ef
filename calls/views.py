"""The call page: a browser client of the signaling server built on ``signaling.js``; the
origin check that lets that client tell a refused websocket from a network failure; and
the protocol's AsyncAPI document."""

from __future__ import annotations

from urllib.parse import urlparse

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET
from django.views.generic import TemplateView

from calls.asyncapi import document_json
from calls.auth.websocket import OriginCheck


class CallPageView(TemplateView):
    """Sign in, pick a group or a room, and join its call; all state lives in the browser."""

    template_name = "calls/call.html"


@require_GET
def origin_check(request: HttpRequest) -> JsonResponse:
    """``{"allowed": bool}``: whether the websocket accepts this request's ``Origin``.

    A browser shows a websocket refused at the handshake (HTTP 403, a foreign ``Origin``)
    only as a close 1006 before open, like a network failure; ``signaling.js`` asks here
    then. The answer comes from the websocket's own check (``OriginCheck``), so no
    ``Origin`` (not a browser) is allowed as there. No authentication, and
    ``Access-Control-Allow-Origin: *`` so that a refused origin can read the answer, which
    tells a page only whether its own origin may connect.
    """
    origin = request.headers.get("Origin")
    try:
        allowed = OriginCheck(None).valid_origin(None if origin is None else urlparse(origin))
    except ValueError:  # not a URL (a bad IPv6 literal, a port out of range)
        allowed = False
    response = JsonResponse({"allowed": allowed})
    response["Access-Control-Allow-Origin"] = "*"
    response["Cache-Control"] = "no-store"
    patch_vary_headers(response, ["Origin"])
    return response


@require_GET
def asyncapi_document(request: HttpRequest) -> HttpResponse:
    """The signaling protocol as an AsyncAPI 3.0.0 document, generated from its schemas
    (``calls.asyncapi``) once per process. No authentication: it is the public contract."""
    return HttpResponse(document_json(), content_type="application/json")
