"""`/api/alerts/`: alert rules with their channels; `test/` sends a test notification,
`deliveries/` lists what was sent and how each attempt went.

Rules are team-scoped: a team's admins and members manage them, viewers read them, other
teams get 404. Rules without a team (`node_offline`) are staff's. A webhook channel's
`secret` is in the answer that made it, and never again."""

from django.db import IntegrityError
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_view
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.exceptions import ValidationError as ApiValidationError
from rest_framework.response import Response

from accounts.audit import audit_describe
from accounts.permissions import team_for_submission
from accounts.selectors import team_list_submittable
from jobs.models import JobDefinition, JobSchedule
from resources.models import Queue

from .models import (
    THRESHOLD_CONDITIONS,
    AlertDelivery,
    AlertRule,
    ChannelKind,
    Condition,
)
from .selectors import alert_delivery_list, alert_rule_changeable, alert_rule_list_visible
from .sending import webhook_target_refusal
from .services import (
    RULE_FIELDS,
    alert_rule_create,
    alert_rule_delete,
    alert_rule_test,
    alert_rule_update,
)

VIEWERS_MAY_NOT = "Viewers may look at this team's alerts but not change them."


class ChannelSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    kind = serializers.ChoiceField(choices=ChannelKind.choices)
    target = serializers.CharField(
        max_length=500, help_text="The webhook's URL, or the e-mail address."
    )
    secret = serializers.SerializerMethodField(
        help_text="A webhook's signing secret: only in the answer that made the channel."
    )

    def get_secret(self, channel) -> str | None:
        return self.context.get("new_secrets", {}).get(channel.pk)

    def validate(self, data):
        kind, target = data["kind"], data["target"]
        field = serializers.EmailField() if kind == ChannelKind.EMAIL else serializers.URLField()
        try:
            field.run_validation(target)
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({"target": exc.detail}) from None
        if kind == ChannelKind.EMAIL:
            return data
        refusal = webhook_target_refusal(target)
        if refusal:
            raise serializers.ValidationError({"target": [refusal]})
        return data


class AlertRuleSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    team = serializers.SlugField(
        required=False, allow_null=True, help_text="Optional with one team; none for node rules."
    )
    name = serializers.CharField(max_length=200)
    condition = serializers.ChoiceField(choices=Condition.choices)
    threshold = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1e9)
    window_seconds = serializers.IntegerField(required=False, min_value=60, max_value=86400 * 30)
    queue = serializers.CharField(required=False, allow_blank=True, max_length=100)
    definition = serializers.IntegerField(
        source="definition_id", required=False, allow_null=True, min_value=1
    )
    schedule = serializers.IntegerField(
        source="schedule_id", required=False, allow_null=True, min_value=1
    )
    name_pattern = serializers.CharField(required=False, allow_blank=True, max_length=200)
    repeat_interval_seconds = serializers.IntegerField(
        required=False, allow_null=True, min_value=60, max_value=86400 * 7
    )
    snoozed_until = serializers.DateTimeField(required=False, allow_null=True)
    enabled = serializers.BooleanField(required=False)
    channels = ChannelSerializer(many=True)
    created_at = serializers.DateTimeField(read_only=True)

    def to_representation(self, rule):
        data = super().to_representation(rule)
        data["team"] = rule.team.slug if rule.team_id else None
        return data

    def validate_channels(self, channels):
        if not channels:
            raise serializers.ValidationError("At least one channel.")
        if len(channels) > 10:
            raise serializers.ValidationError("At most 10 channels.")
        return channels

    def validate(self, data):
        user = self.context["request"].user
        rule = self.instance
        condition = data.get("condition", rule.condition if rule else None)
        threshold = data.get("threshold", rule.threshold if rule else None)
        if condition in THRESHOLD_CONDITIONS and threshold is None:
            raise serializers.ValidationError({"threshold": ["This condition needs one."]})
        if condition == Condition.FAILURE_RATIO and threshold is not None and threshold > 1:
            raise serializers.ValidationError({"threshold": ["A ratio, from 0 to 1."]})
        if rule is None:
            data["team"] = self._team(user, condition, data.get("team"))
        elif "team" in data and data.pop("team") != (rule.team.slug if rule.team_id else None):
            raise serializers.ValidationError({"team": ["A rule's team cannot change."]})
        if rule is not None and (condition == Condition.NODE_OFFLINE) != (rule.team_id is None):
            raise serializers.ValidationError({"condition": ["Node rules are staff rules."]})
        team = data.get("team", rule.team if rule else None)
        self._filters_of_team(data, team)
        return data

    def _team(self, user, condition, slug):
        if condition == Condition.NODE_OFFLINE:
            if not user.is_staff:
                raise PermissionDenied("Only staff make node rules.")
            if slug:
                raise serializers.ValidationError({"team": ["Node rules have no team."]})
            return None
        if slug:
            try:
                return team_for_submission(user=user, slug=slug, viewers_may_not=VIEWERS_MAY_NOT)
            except serializers.ValidationError as exc:
                raise serializers.ValidationError({"team": exc.detail}) from None
        teams = list(team_list_submittable(user=user)[:2])
        if len(teams) != 1:
            raise serializers.ValidationError({"team": ["Name the team (a slug)."]})
        return teams[0]

    def _filters_of_team(self, data, team):
        """A definition, schedule or queue named must be the team's (a 400 otherwise)."""
        if (
            data.get("definition_id")
            and not JobDefinition.objects.filter(pk=data["definition_id"], team=team).exists()
        ):
            raise serializers.ValidationError({"definition": ["No such definition."]})
        if (
            data.get("schedule_id")
            and not JobSchedule.objects.filter(pk=data["schedule_id"], team=team).exists()
        ):
            raise serializers.ValidationError({"schedule": ["No such schedule."]})
        if data.get("queue") and not Queue.objects.filter(name=data["queue"]).exists():
            raise serializers.ValidationError({"queue": ["No such queue."]})


class DeliverySerializer(serializers.ModelSerializer):
    channel = serializers.SerializerMethodField()
    incident = serializers.CharField(
        source="incident.dedupe_key", default=None, allow_null=True, help_text="Null for tests."
    )

    class Meta:
        model = AlertDelivery
        fields = [
            "id",
            "kind",
            "status",
            "channel",
            "incident",
            "attempts",
            "attempt_log",
            "next_attempt_at",
            "created_at",
            "delivered_at",
            "payload",
        ]

    def get_channel(self, delivery) -> dict:
        return {
            "id": delivery.channel_id,
            "kind": delivery.channel.kind,
            "target": delivery.channel.target,
        }


RULE_EXAMPLE = OpenApiExample(
    "A webhook and an e-mail when a nightly job fails for good",
    value={
        "name": "nightly failed",
        "condition": "job_dead_lettered",
        "name_pattern": "nightly-*",
        "channels": [
            {"kind": "webhook", "target": "https://hooks.example.com/scheduler"},
            {"kind": "email", "target": "oncall@example.com"},
        ],
    },
    request_only=True,
)


@extend_schema_view(
    create=extend_schema(examples=[RULE_EXAMPLE]),
    test=extend_schema(request=None, responses={202: DeliverySerializer(many=True)}),
    deliveries=extend_schema(responses=DeliverySerializer(many=True), filters=False),
)
class AlertRuleViewSet(viewsets.ModelViewSet):
    serializer_class = AlertRuleSerializer
    queryset = AlertRule.objects.none()  # the schema's model; requests use get_queryset
    http_method_names = ["get", "post", "put", "patch", "delete"]

    def get_queryset(self):
        return alert_rule_list_visible(user=self.request.user)

    def _changeable(self) -> AlertRule:
        rule = self.get_object()
        audit_describe(self.request, target=rule)
        if not alert_rule_changeable(user=self.request.user, rule=rule):
            raise PermissionDenied(VIEWERS_MAY_NOT)
        return rule

    def _answer(self, rule, new_secrets, code=status.HTTP_200_OK):
        rule = self.get_queryset().get(pk=rule.pk)
        context = {"request": self.request, "new_secrets": new_secrets}
        return Response(AlertRuleSerializer(rule, context=context).data, status=code)

    @staticmethod
    def _fields(data) -> dict:
        return {name: data[name] for name in RULE_FIELDS if name in data}

    def create(self, request):
        serializer = AlertRuleSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            rule, new_secrets = alert_rule_create(
                team=data["team"],
                fields=self._fields(data),
                channels=data["channels"],
                user=request.user,
            )
        except IntegrityError:
            raise ApiValidationError({"name": ["The team has a rule of this name."]}) from None
        return self._answer(rule, new_secrets, status.HTTP_201_CREATED)

    def update(self, request, pk=None, partial=False):
        rule = self._changeable()
        serializer = AlertRuleSerializer(
            rule, data=request.data, partial=partial, context={"request": request}
        )
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            rule, new_secrets = alert_rule_update(
                rule=rule, fields=self._fields(data), channels=data.get("channels")
            )
        except IntegrityError:
            raise ApiValidationError({"name": ["The team has a rule of this name."]}) from None
        return self._answer(rule, new_secrets)

    def partial_update(self, request, pk=None):
        return self.update(request, pk, partial=True)

    def destroy(self, request, pk=None):
        alert_rule_delete(rule=self._changeable())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=True, methods=["post"], pagination_class=None, filter_backends=[])
    def test(self, request, pk=None):
        """Send a test notification to each of the rule's channels."""
        ids = alert_rule_test(rule=self._changeable())
        deliveries = AlertDelivery.objects.filter(pk__in=ids).select_related("channel")
        return Response(
            DeliverySerializer(deliveries, many=True).data, status=status.HTTP_202_ACCEPTED
        )

    @action(detail=True, methods=["get"])
    def deliveries(self, request, pk=None):
        """The rule's notifications, newest first, with each attempt's answer."""
        page = self.paginate_queryset(alert_delivery_list(rule=self.get_object()))
        return self.get_paginated_response(DeliverySerializer(page, many=True).data)
