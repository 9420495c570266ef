from django.urls import path

from calls.views import CallPageView, origin_check

urlpatterns = [
    path("", CallPageView.as_view(), name="call-page"),
    path("api/calls/origin-check/", origin_check, name="origin-check"),
]
