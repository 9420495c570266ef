from django.urls import path

from calls.views import CallPageView

urlpatterns = [
    path("", CallPageView.as_view(), name="call-page"),
]
