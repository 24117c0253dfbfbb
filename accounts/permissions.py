"""How the API answers "may this caller act for this team?": the team a request names,
and the 403 a viewer gets. Every app's API asks here, so the choice between a 403 (you
may look but not act) and a 400 or 404 (no such team for you) is made in one place."""

from rest_framework import serializers
from rest_framework.exceptions import PermissionDenied

from .audit import audit_describe
from .models import Team, User
from .selectors import team_list_submittable, team_list_visible

NO_TEAM_TO_SUBMIT_TO = "No team with this slug that you may submit to."


def team_for_submission(*, user: User, slug: str, viewers_may_not: str) -> Team:
    """The team with this slug, if the user may submit for it; a viewer of it gets a 403
    saying `viewers_may_not`, anyone else a validation error (for the `team` field)."""
    team = team_list_submittable(user=user).filter(slug=slug).first()
    if team is None:
        if team_list_visible(user=user).filter(slug=slug).exists():
            raise PermissionDenied(viewers_may_not)
        raise serializers.ValidationError(NO_TEAM_TO_SUBMIT_TO)
    return team


def require_team_submitter(*, user: User, team_id: int, refusal: str) -> None:
    """A 403 saying `refusal` unless the user may submit for (and so change the objects
    of) the team; the caller has already made sure the user can see the team."""
    if not team_list_submittable(user=user).filter(pk=team_id).exists():
        raise PermissionDenied(refusal)


# `get_changeable_object()`: the object in the path, if the caller may change it. Whoever
# cannot see it gets a 404 (from `get_queryset`); a viewer of its team a 403 saying
# `viewers_may_not_change`. (A comment, not a docstring: drf-spectacular would take a
# docstring for the description of every operation of the viewsets that use it.)
class ChangeableObjectMixin:
    viewers_may_not_change: str
    # The audit log records the object acted on, and its team even for a refusal.
    audit_target = True

    def get_changeable_team_id(self, obj) -> int:
        return obj.team_id

    def get_changeable_object(self, refusal: str | None = None):
        obj = self.get_object()
        if self.audit_target:
            audit_describe(self.request, target=obj)
        require_team_submitter(
            user=self.request.user,
            team_id=self.get_changeable_team_id(obj),
            refusal=refusal or self.viewers_may_not_change,
        )
        return obj
