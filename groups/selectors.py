"""Read-only questions about chat groups. The calls app asks its own through
``group_ids_of_user``, ``roles_among``, ``member_ids_of_group`` and ``group_name``: the
defaults of its host settings (calls/host.py)."""

from __future__ import annotations

from collections.abc import Collection

from django.db.models import QuerySet

from groups.models import Group, Membership


def group_is_member(*, user_id: int, group_id: int) -> bool:
    """Whether the user belongs to the group (a missing group answers ``False``)."""
    return Membership.objects.filter(user_id=user_id, group_id=group_id).exists()


def group_ids_of_user(user_id: int | str) -> frozenset[str]:
    """The primary keys, as strings, of every group the user belongs to."""
    return frozenset(str(pk) for pk in Membership.objects.filter(user_id=user_id).values_list("group_id", flat=True))


def roles_among(pairs: Collection[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The role of each of these ``(user_id, group_id)`` pairs that is a membership, in one
    query (CALLS_GROUP_ROLES)."""
    users = {user for user, _ in pairs}
    groups = {group for _, group in pairs}
    rows = Membership.objects.filter(user_id__in=users, group_id__in=groups).values_list("user_id", "group_id", "role")
    wanted = set(pairs)
    return {(str(u), str(g)): role for u, g, role in rows if (str(u), str(g)) in wanted}


def group_name(group: Group) -> str:
    """CALLS_GROUP_NAME."""
    return group.name


def member_ids_of_group(group_id: int | str) -> set[str]:
    """The primary keys, as strings, of the group's members."""
    return {str(pk) for pk in Membership.objects.filter(group_id=group_id).values_list("user_id", flat=True)}


def groups_of_user(*, user_id: int) -> QuerySet[Group]:
    return Group.objects.filter(memberships__user_id=user_id).order_by("name", "id")


def group_for_member(*, user_id: int, group_id: int) -> Group | None:
    """The group with its members, or ``None`` when it does not exist or the user is
    not a member (the two are indistinguishable to the caller on purpose)."""
    if not group_is_member(user_id=user_id, group_id=group_id):
        return None
    return Group.objects.prefetch_related("memberships__user").get(pk=group_id)
