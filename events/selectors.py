"""Reads of events: who may see which."""

from django.db.models import QuerySet

from accounts.models import User
from accounts.selectors import team_list_visible

from .models import Event


def event_list_visible(*, user: User) -> QuerySet[Event]:
    """Staff see every event; anyone else their teams' events. A node's own events (no
    team) are for staff; a team sees what a node did to its jobs through the job's own
    events, which name the node (placed on it, lost with it)."""
    if user.is_staff:
        return Event.objects.all()
    # Ids, not a subquery: with one team the list reads the (team, at) index in order.
    team_ids = list(team_list_visible(user=user).values_list("pk", flat=True))
    return Event.objects.filter(team_id__in=team_ids)
