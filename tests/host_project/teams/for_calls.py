"""What calls asks about teams (docs/integration.md, step 3), and the product's answer to
its signals (step 5)."""

from collections.abc import Collection
from typing import Any

from django.dispatch import receiver

from calls.signals import call_ended, call_started, ring_missed
from teams.models import Post, Seat, Team

LEVEL_NAMES = {Seat.Level.GUEST: "guest", Seat.Level.MEMBER: "member", Seat.Level.HOST: "host"}


def team_ids_of(user_id: str) -> list[int]:
    return list(Seat.objects.filter(person_id=user_id).values_list("team_id", flat=True))


def levels_among(pairs: Collection[tuple[str, str]]) -> dict[tuple[str, str], str]:
    seats = Seat.objects.filter(person_id__in={u for u, _ in pairs}, team_id__in={t for _, t in pairs})
    found = {(str(s.person_id), str(s.team_id)): LEVEL_NAMES[s.level] for s in seats}
    return {pair: level for pair, level in found.items() if pair in set(pairs)}


def seated_in(group_id: str) -> list[int]:
    return list(Seat.objects.filter(team_id=group_id).values_list("person_id", flat=True))


def title_of(team: Team) -> str:
    return team.title


@receiver(call_started)
def post_call_started(sender: Any, call: Any, **kwargs: Any) -> None:
    if call.group_id is not None:
        Post.objects.create(team_id=call.group_id, text=f"Call started: {call.room_id}")


@receiver(call_ended)
def post_call_ended(sender: Any, call: Any, **kwargs: Any) -> None:
    if call.group_id is not None:
        Post.objects.create(team_id=call.group_id, text=f"Call ended: {call.room_id}")


@receiver(ring_missed)
def post_missed(sender: Any, ring: Any, **kwargs: Any) -> None:
    Post.objects.create(team_id=ring.call.group_id, text=f"Missed call for {ring.callee_id}")
