"""The call page: a browser client of the signaling server built on ``signaling.js``."""

from __future__ import annotations

from django.views.generic import TemplateView


class CallPageView(TemplateView):
    """Sign in, pick a group or a room, and join its call; all state lives in the browser."""

    template_name = "calls/call.html"
