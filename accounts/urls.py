from django.urls import path
from rest_framework_simplejwt.views import TokenRefreshView

from accounts.views import MeView, ThrottledTokenObtainPairView
from calls.api import WsTicketView

urlpatterns = [
    path("token/", ThrottledTokenObtainPairView.as_view(), name="token-obtain"),
    path("token/refresh/", TokenRefreshView.as_view(), name="token-refresh"),
    path("me/", MeView.as_view(), name="me"),
    path("ws-ticket/", WsTicketView.as_view(), name="ws-ticket"),
]
