from django.apps import AppConfig


class GroupsConfig(AppConfig):
    name = "groups"
    label = "chatgroups"  # "groups" would clash with django.contrib.auth's related names
    verbose_name = "Chat groups"
    default_auto_field = "django.db.models.BigAutoField"
