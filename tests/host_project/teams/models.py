from django.conf import settings
from django.db import models


class Team(models.Model):
    """The product's chat group: a title, and seats of people at a level."""

    title = models.CharField(max_length=100)

    def __str__(self) -> str:
        return self.title


class Seat(models.Model):
    class Level(models.IntegerChoices):
        GUEST = 0
        MEMBER = 1
        HOST = 2

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="seats")
    person = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="seats")
    level = models.IntegerField(choices=Level.choices, default=Level.MEMBER)

    def __str__(self) -> str:
        return f"{self.person} in {self.team}"


class Post(models.Model):
    """A line in a team's chat."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="posts")
    text = models.CharField(max_length=500)

    def __str__(self) -> str:
        return self.text
