"""Reads for alerts: which rules a user sees, and a rule's deliveries."""

from django.db.models import Q, QuerySet

from accounts.models import User
from accounts.selectors import team_list_submittable, team_list_visible

from .models import AlertDelivery, AlertRule


def alert_rule_list_visible(*, user: User) -> QuerySet[AlertRule]:
    """Staff see every rule; anyone else their teams' rules (staff rules have no team)."""
    rules = AlertRule.objects.select_related("team").prefetch_related("channels")
    if user.is_staff:
        return rules
    return rules.filter(team__in=team_list_visible(user=user).values("pk"))


def alert_rule_changeable(*, user: User, rule: AlertRule) -> bool:
    """Staff change every rule; a team's admins and members its rules; viewers none."""
    if user.is_staff:
        return True
    return team_list_submittable(user=user).filter(Q(pk=rule.team_id)).exists()


def alert_delivery_list(*, rule: AlertRule) -> QuerySet[AlertDelivery]:
    return (
        AlertDelivery.objects.filter(rule=rule)
        .select_related("channel", "incident")
        .order_by("-created_at", "-id")
    )
