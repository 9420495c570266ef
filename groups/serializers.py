from rest_framework import serializers

from groups.models import Group, Membership


class GroupSerializer(serializers.ModelSerializer):
    id = serializers.CharField(read_only=True)

    class Meta:
        model = Group
        fields = ("id", "name")


class MemberSerializer(serializers.ModelSerializer):
    userId = serializers.CharField(source="user_id", read_only=True)
    username = serializers.CharField(source="user.username", read_only=True)
    displayName = serializers.CharField(source="user.shown_name", read_only=True)

    class Meta:
        model = Membership
        fields = ("userId", "username", "displayName", "role")


class GroupDetailSerializer(GroupSerializer):
    members = MemberSerializer(source="memberships", many=True, read_only=True)

    class Meta(GroupSerializer.Meta):
        fields = ("id", "name", "members")  # type: ignore[assignment]
