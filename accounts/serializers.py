from rest_framework import serializers

from accounts.models import User


class MeSerializer(serializers.ModelSerializer):
    id = serializers.CharField(read_only=True)
    displayName = serializers.CharField(source="shown_name", read_only=True)
    isStaff = serializers.BooleanField(
        source="is_staff", read_only=True, help_text="Staff moderate every call (docs/protocol.md §10)"
    )

    class Meta:
        model = User
        fields = ("id", "username", "displayName", "email", "isStaff")
