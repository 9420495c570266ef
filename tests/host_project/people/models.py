from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.db import models


class PersonManager(BaseUserManager["Person"]):
    def create_user(self, email: str, full_name: str = "", password: str | None = None) -> "Person":
        person = self.model(email=self.normalize_email(email), full_name=full_name)
        person.set_password(password)
        person.save(using=self._db)
        return person


class Person(AbstractBaseUser):
    """A user of the product: logs in with an email, has a full name and an API key; no
    username, no display_name, no is_staff."""

    email = models.EmailField(unique=True)
    full_name = models.CharField(max_length=200, blank=True)
    api_key = models.CharField(max_length=64, unique=True, null=True, blank=True)
    is_active = models.BooleanField(default=True)

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    objects = PersonManager()

    def __str__(self) -> str:
        return self.email
