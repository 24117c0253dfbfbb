"""Reads for resources: queues a team or user may use, and allocations and what they hold."""

from django.db.models import Exists, OuterRef, Q, QuerySet

from accounts.models import Team, User

from .models import LIVE_ALLOCATION_STATUSES, Allocation, Queue


def queue_list_for_team(*, team: Team) -> QuerySet[Queue]:
    """The queues `team` may submit into."""
    listed = Queue.teams.through.objects.filter(queue_id=OuterRef("pk"), team_id=team.pk)
    return Queue.objects.filter(Q(all_teams=True) | Exists(listed))


def queue_list_visible(*, user: User) -> QuerySet[Queue]:
    """Staff see every queue; others the queues one of their teams may submit into."""
    if user.is_staff:
        return Queue.objects.all()
    listed = Queue.teams.through.objects.filter(
        queue_id=OuterRef("pk"), team__memberships__user=user
    )
    return Queue.objects.filter(Q(all_teams=True) | Exists(listed))


def allocation_node_name(*, token: str) -> str | None:
    return (
        Allocation.objects.filter(execution__token=token, status__in=LIVE_ALLOCATION_STATUSES)
        .values_list("node__name", flat=True)
        .first()
    )
