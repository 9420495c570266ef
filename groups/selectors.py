"""Read-only questions about chat groups."""

from __future__ import annotations

from collections.abc import Collection

from django.db.models import QuerySet

from groups.models import Group, Membership


def group_is_member(*, user_id: int, group_id: int) -> bool:
    """Whether the user belongs to the group (a missing group answers ``False``)."""
    return Membership.objects.filter(user_id=user_id, group_id=group_id).exists()


def group_ids_of_user(*, user_id: int) -> frozenset[str]:
    """The primary keys, as strings, of every group the user belongs to."""
    return frozenset(str(pk) for pk in Membership.objects.filter(user_id=user_id).values_list("group_id", flat=True))


def group_roles_of_user(*, user_id: int) -> dict[str, str]:
    """The user's role in each of its groups, by the group's primary key as a string."""
    rows = Membership.objects.filter(user_id=user_id).values_list("group_id", "role")
    return {str(group_id): role for group_id, role in rows}


def member_ids_of_group(*, group_id: int) -> set[str]:
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


def memberships_among(pairs: Collection[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of these ``(user_id, group_id)`` pairs (primary keys as strings) are
    memberships, in one query."""
    users = {user for user, _ in pairs}
    groups = {group for _, group in pairs}
    rows = Membership.objects.filter(user_id__in=users, group_id__in=groups).values_list("user_id", "group_id")
    return {(str(user), str(group)) for user, group in rows} & set(pairs)
