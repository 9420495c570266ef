from django.urls import path

from groups.views import GroupDetailView, GroupListView

urlpatterns = [
    path("", GroupListView.as_view(), name="group-list"),
    path("<int:group_id>/", GroupDetailView.as_view(), name="group-detail"),
]
