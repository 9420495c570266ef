"""The product's own credential: an API key, in `Authorization: Key K` over HTTP and in
`?key=K` on a websocket (docs/integration.md, step 3)."""

from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from django.contrib.auth.models import AnonymousUser
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from people.models import Person


def person_from_key(key: str) -> tuple[Person | None, float | None]:
    """CALLS_TOKEN_USER: the active person of an API key; keys do not expire."""
    person = Person.objects.filter(api_key=key, is_active=True).first() if key else None
    return person, None


def name_of(person: Person) -> str:
    """CALLS_DISPLAY_NAME."""
    return person.full_name or person.email.split("@")[0]


class KeyMiddleware:
    """CALLS_WEBSOCKET_AUTH_MIDDLEWARE: scope["user"] from `?key=`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        key = parse_qs(scope.get("query_string", b"").decode()).get("key", [""])[0]
        person, _ = await database_sync_to_async(person_from_key)(key)
        return await self.inner(dict(scope, user=person or AnonymousUser()), receive, send)


class KeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Any) -> tuple[Person, str] | None:
        scheme, _, key = get_authorization_header(request).decode().partition(" ")
        if scheme != "Key":
            return None
        person, _ = person_from_key(key.strip())
        return (person, key) if person is not None else None

    def authenticate_header(self, request: Any) -> str:
        return "Key"
