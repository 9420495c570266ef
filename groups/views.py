from django.http import Http404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from groups.selectors import group_for_member, groups_of_user
from groups.serializers import GroupDetailSerializer, GroupSerializer


class GroupListView(APIView):
    """The caller's groups."""

    @extend_schema(
        operation_id="groups_list",
        responses={
            200: GroupSerializer(many=True),
            401: OpenApiResponse(description="No credential, or an invalid one"),
        },
    )
    def get(self, request: Request) -> Response:
        return Response(GroupSerializer(groups_of_user(user_id=_user_id(request)), many=True).data)


class GroupDetailView(APIView):
    """One of the caller's groups with its members; 404 for anyone else."""

    @extend_schema(
        operation_id="groups_detail",
        responses={
            200: GroupDetailSerializer,
            401: OpenApiResponse(description="No credential, or an invalid one"),
            404: OpenApiResponse(description="No such group, or the caller is not a member"),
        },
    )
    def get(self, request: Request, group_id: int) -> Response:
        group = group_for_member(user_id=_user_id(request), group_id=group_id)
        if group is None:
            raise Http404
        return Response(GroupDetailSerializer(group).data)


def _user_id(request: Request) -> int:
    """The authenticated caller's primary key (the views require authentication)."""
    assert request.user.pk is not None
    return int(request.user.pk)
