from rest_framework import serializers

from accounts.models import User


class MeSerializer(serializers.ModelSerializer):
    id = serializers.CharField(read_only=True)
    displayName = serializers.CharField(source="shown_name", read_only=True)

    class Meta:
        model = User
        fields = ("id", "username", "displayName", "email")
