"""The product's own URL layout, with calls under /video/ (step 4)."""

from django.urls import include, path

from calls import ops
from calls.api import WsTicketView

urlpatterns = [
    path("video/", include("calls.urls")),
    path("video/ws-ticket/", WsTicketView.as_view()),
    path("up/", ops.healthz),
]
