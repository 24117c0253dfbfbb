"""Reads for accounts: which teams a user may see and act for."""

from django.db.models import QuerySet

from .models import SUBMITTING_ROLES, Team, User


def team_list_visible(*, user: User) -> QuerySet[Team]:
    if user.is_staff:
        return Team.objects.all()
    return Team.objects.filter(memberships__user=user)


def team_list_submittable(*, user: User) -> QuerySet[Team]:
    if user.is_staff:
        return Team.objects.all()
    return Team.objects.filter(memberships__user=user, memberships__role__in=SUBMITTING_ROLES)
