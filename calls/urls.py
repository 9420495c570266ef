from django.urls import path

from calls.api import CallDetailView, CallHistoryView, LiveCallsView
from calls.views import CallPageView, asyncapi_document, origin_check

urlpatterns = [
    path("", CallPageView.as_view(), name="call-page"),
    path("api/calls/", CallHistoryView.as_view(), name="call-history"),
    path("api/calls/live/", LiveCallsView.as_view(), name="call-live"),
    path("api/calls/origin-check/", origin_check, name="origin-check"),
    path("api/asyncapi.json", asyncapi_document, name="asyncapi"),
    # Last: a sessionId never reads "live" or "origin-check" (it is 32 hex digits).
    path("api/calls/<str:session_id>/", CallDetailView.as_view(), name="call-detail"),
]
