from django.urls import path

from calls.views import CallPageView, asyncapi_document, origin_check

urlpatterns = [
    path("", CallPageView.as_view(), name="call-page"),
    path("api/calls/origin-check/", origin_check, name="origin-check"),
    path("api/asyncapi.json", asyncapi_document, name="asyncapi"),
]
