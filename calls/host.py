"""What ``calls`` needs from the chat product it runs in, and where it gets it.

``calls`` is an extension: it knows the host's users (``AUTH_USER_MODEL``) and chat groups
only through the settings below, each a dotted path resolved once when the app starts
(``check``, from ``CallsConfig.ready``), so that a wrong path stops the start with a
sentence naming the setting instead of failing at some user's first join. The defaults
are this project's ``accounts`` and ``groups`` apps; ``docs/integration.md`` shows a host
with its own user and group models.

The group functions and ``CALLS_TOKEN_USER`` may query the database: ``calls`` calls
them on its lookup threads (``in_lookup_thread``), never on the event loop.
``CALLS_DISPLAY_NAME`` is called on the event loop with a user the auth middleware has
loaded, and must not query. Identifiers are strings (primary keys as ``str``), as the
protocol carries them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any, ParamSpec, TypeVar

from channels.db import DatabaseSyncToAsync
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

T = TypeVar("T")
P = ParamSpec("P")

GROUP_MODEL_SETTING = "CALLS_GROUP_MODEL"
DEFAULT_GROUP_MODEL = "chatgroups.Group"


@dataclass(frozen=True, slots=True)
class Seam:
    """One dependency on the host: its setting, its default and what it must be."""

    setting: str
    default: str
    expects: str


SEAMS = (
    Seam(
        "CALLS_USER_GROUPS",
        "groups.selectors.group_ids_of_user",
        "a function (user_id: str) -> Collection[str]: the ids of the groups the user belongs to",
    ),
    Seam(
        "CALLS_GROUP_ROLES",
        "groups.selectors.roles_among",
        "a function (pairs: Collection[tuple[str, str]]) -> Mapping[tuple[str, str], str]: the role of each "
        "(user id, group id) pair that is a membership (pairs that are not are left out)",
    ),
    Seam(
        "CALLS_GROUP_MEMBERS",
        "groups.selectors.member_ids_of_group",
        "a function (group_id: str) -> Collection[str]: the ids of the group's members",
    ),
    Seam(
        "CALLS_GROUP_NAME",
        "groups.selectors.group_name",
        "a function (group) -> str: the name to show for a group (an instance of CALLS_GROUP_MODEL)",
    ),
    Seam(
        "CALLS_DISPLAY_NAME",
        "accounts.selectors.display_name",
        "a function (user) -> str: the name other participants see for a user",
    ),
    Seam(
        "CALLS_TOKEN_USER",
        "calls.auth.websocket.user_and_expiry_from_token",
        "a function (token: str) -> tuple[user | None, float | None]: the active user an access token names "
        "and when the token expires (a Unix time, None: never), or (None, None)",
    ),
    Seam(
        "CALLS_WEBSOCKET_AUTH_MIDDLEWARE",
        "calls.auth.websocket.WebsocketAuthMiddleware",
        'an ASGI middleware class (inner) -> app that sets scope["user"]',
    ),
)
SEAM_BY_SETTING = {seam.setting: seam for seam in SEAMS}
# Roles of CALLS_GROUP_ROLES that moderate a group's calls (docs/protocol.md §10).
DEFAULT_MODERATOR_ROLES = ("owner", "admin")


def group_model_label() -> str:
    """``CALLS_GROUP_MODEL`` (``app_label.ModelName``): what a call room's ``group`` refers
    to. Read when the models are defined, before ``install_defaults`` could run."""
    return getattr(settings, GROUP_MODEL_SETTING, DEFAULT_GROUP_MODEL)


@cache
def resolved(setting: str) -> Any:
    """The object a seam's setting names (imported once)."""
    seam = SEAM_BY_SETTING[setting]
    path = getattr(settings, setting, seam.default)
    try:
        found = import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"{setting} = {path!r} cannot be imported ({exc}). Set {setting} to the dotted path of {seam.expects}."
        ) from None
    if not callable(found):
        raise ImproperlyConfigured(f"{setting} = {path!r} is not callable. It must be {seam.expects}.")
    return found


def moderator_roles() -> frozenset[str]:
    return frozenset(getattr(settings, "CALLS_MODERATOR_ROLES", DEFAULT_MODERATOR_ROLES))


def check() -> None:
    """Resolve every seam and the group model now: called when the app starts."""
    from django.apps import apps

    label = group_model_label()
    try:
        apps.get_model(label)
    except (LookupError, ValueError) as exc:
        raise ImproperlyConfigured(
            f"{GROUP_MODEL_SETTING} = {label!r} is not an installed model ({exc}). Set it to the "
            "'app_label.ModelName' of the host's chat group model."
        ) from None
    roles = getattr(settings, "CALLS_MODERATOR_ROLES", DEFAULT_MODERATOR_ROLES)
    if isinstance(roles, str) or not all(isinstance(role, str) for role in roles):
        raise ImproperlyConfigured(
            f"CALLS_MODERATOR_ROLES = {roles!r}: it must be a list of the roles (CALLS_GROUP_ROLES' values) "
            "that moderate a group's calls."
        )
    resolved.cache_clear()
    for seam in SEAMS:
        resolved(seam.setting)


# ---------------------------------------------------------------------------
# The questions calls asks (synchronous: run them with in_lookup_thread)
# ---------------------------------------------------------------------------


def group_ids_of_user(user_id: str) -> frozenset[str]:
    return frozenset(str(group) for group in resolved("CALLS_USER_GROUPS")(user_id))


def roles_among(pairs: Collection[tuple[str, str]]) -> Mapping[tuple[str, str], str]:
    if not pairs:
        return {}
    return {(str(user), str(group)): role for (user, group), role in resolved("CALLS_GROUP_ROLES")(pairs).items()}


def role_in_group(user_id: str, group_id: str) -> str | None:
    """The user's role in the group, ``None`` when it is not a member."""
    return roles_among([(user_id, group_id)]).get((user_id, group_id))


def member_ids_of_group(group_id: str) -> frozenset[str]:
    return frozenset(str(user) for user in resolved("CALLS_GROUP_MEMBERS")(group_id))


def group_name(group: Any) -> str:
    return str(resolved("CALLS_GROUP_NAME")(group))


def display_name(user: Any) -> str:
    return str(resolved("CALLS_DISPLAY_NAME")(user))


def user_and_expiry_from_token(raw: str) -> tuple[Any, float | None]:
    user, expires_at = resolved("CALLS_TOKEN_USER")(raw)
    return user, None if expires_at is None else float(expires_at)


def websocket_auth_middleware(inner: Any) -> Any:
    return resolved("CALLS_WEBSOCKET_AUTH_MIDDLEWARE")(inner)


def is_staff(user: Any) -> bool:
    """Staff moderate every call (docs/protocol.md §10); a user model without the flag has none."""
    return bool(getattr(user, "is_staff", False))


# ---------------------------------------------------------------------------
# Where the questions run
# ---------------------------------------------------------------------------

# The lookups that must never wait behind call-history writes run on threads of their
# own: the handshake's (token, ticket, session), refresh-auth's, the credentials sweep's
# and a join's group lookup.
# database_sync_to_async runs every call on asgiref's one thread-sensitive thread, which
# the call-history writer (calls/history.py) uses too: behind a backlog of history writes
# (a slow database, the leaves of a thousand participants of a dead process) every
# handshake, and even the 4401 of a bad token, would wait its turn. The lookups need no
# thread affinity: each opens or reuses its thread's own database connection, and
# DatabaseSyncToAsync closes stale ones around each call as database_sync_to_async does.
# Two threads: a lookup is one or two indexed reads, and more would hold more database
# connections per process for nothing.
LOOKUP_THREADS = 2
_lookup_executor = ThreadPoolExecutor(max_workers=LOOKUP_THREADS, thread_name_prefix="lookup")


def in_lookup_thread(fn: Callable[P, T]) -> Callable[P, Coroutine[Any, Any, T]]:
    """``fn`` (synchronous, may use the database) as a coroutine function that runs it on
    the lookup threads, never behind call-history writes."""
    return DatabaseSyncToAsync(fn, thread_sensitive=False, executor=_lookup_executor)
