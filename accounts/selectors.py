"""Reads for accounts: which teams a user may see and act for, tokens, audit events."""

from django.db.models import QuerySet

from .models import SUBMITTING_ROLES, ApiToken, AuditEvent, Role, Team, User


def team_list_visible(*, user: User) -> QuerySet[Team]:
    if user.is_staff:
        return Team.objects.all()
    return Team.objects.filter(memberships__user=user)


def team_list_submittable(*, user: User) -> QuerySet[Team]:
    if user.is_staff:
        return Team.objects.all()
    return Team.objects.filter(memberships__user=user, memberships__role__in=SUBMITTING_ROLES)


def team_list_administered(*, user: User) -> QuerySet[Team]:
    if user.is_staff:
        return Team.objects.all()
    return Team.objects.filter(memberships__user=user, memberships__role=Role.ADMIN)


def api_token_list_visible(*, user: User) -> QuerySet[ApiToken]:
    """A user's own tokens; staff see everyone's (to revoke a leaked one)."""
    tokens = ApiToken.objects.select_related("user").order_by("-created_at", "-id")
    return tokens if user.is_staff else tokens.filter(user=user)


def audit_event_list_visible(*, user: User) -> QuerySet[AuditEvent]:
    """Staff see every event; a team admin the events of the teams they administer."""
    events = AuditEvent.objects.select_related("team").order_by("-at", "-id")
    if user.is_staff:
        return events
    return events.filter(team__in=team_list_administered(user=user).values("pk"))
