"""`/api/workflows/`: DAGs of steps created at once, listed, cancelled and retried."""

import django_filters
from django.db.models import Count
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from accounts.permissions import ChangeableObjectMixin, team_for_submission
from accounts.selectors import team_list_submittable, team_list_visible
from common.pagination import CursorPagination
from common.schema import refused
from common.serializers import StrictSerializer

from ..models import (
    JobStatus,
    PendingReason,
    TriggerRule,
    Workflow,
    WorkflowStatus,
    WorkflowStep,
    WorkflowTemplate,
)
from ..selectors import (
    workflow_list_visible,
    workflow_template_list_visible,
    workflows_count_steps,
)
from ..services.workflows import (
    MAX_STEPS,
    workflow_cancel,
    workflow_create,
    workflow_retry,
    workflow_template_delete,
    workflow_template_save,
    workflow_template_submit,
)
from .specs import JobSpecSerializer, SpecLimitsMixin, env_field, parameters_field

VIEWERS_MAY_NOT = "Viewers may look at this team's workflows but not change them."
STEP_RULES = [(value, label) for value, label in TriggerRule.choices if value != TriggerRule.EACH]


class StepJobSerializer(JobSpecSerializer):
    """A step's inline job spec: its team is the workflow's, its name the step's."""

    team = None
    name = serializers.CharField(max_length=200, required=False)

    def validate(self, attrs):
        self._validate_target(attrs)
        self._validate_resources(attrs)
        return attrs


class StepOverridesSerializer(SpecLimitsMixin, StrictSerializer):
    """What a step made from a definition changes: env and parameters merge over it."""

    name = serializers.CharField(max_length=200, required=False)
    parameters = parameters_field(required=False)
    env = env_field(required=False)
    priority = serializers.IntegerField(min_value=-1000, max_value=1000, required=False)


class StepSerializer(StrictSerializer):
    name = serializers.CharField(max_length=200)
    job = StepJobSerializer(required=False, help_text="An inline job spec.")
    definition = serializers.IntegerField(
        required=False, help_text="Id of a job definition of the workflow's team."
    )
    overrides = StepOverridesSerializer(required=False)
    depends_on = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, default=list
    )
    trigger_rule = serializers.ChoiceField(choices=STEP_RULES, default=TriggerRule.ALL_SUCCEEDED)

    def validate(self, attrs):
        if ("job" in attrs) == ("definition" in attrs):
            raise serializers.ValidationError(
                {"job": ["Give exactly one of job (an inline spec) and definition."]}
            )
        if "overrides" in attrs and "definition" not in attrs:
            raise serializers.ValidationError({"overrides": ["Only with a definition."]})
        return attrs


class WorkflowCreateSerializer(SpecLimitsMixin, StrictSerializer):
    """A workflow, or a workflow template (whose parameters are defaults)."""

    team = serializers.SlugField(required=False, help_text="Team slug; optional with one team.")
    name = serializers.CharField(max_length=200)
    parameters = serializers.DictField(
        required=False, default=dict, help_text="Values for {{ params.NAME }} in argv and env"
    )
    max_parallel = serializers.IntegerField(
        min_value=1, max_value=100000, required=False, allow_null=True, default=None
    )
    steps = StepSerializer(many=True, max_length=MAX_STEPS)

    def validate_team(self, slug):
        if self.instance is not None:
            if slug != self.instance.team.slug:
                raise serializers.ValidationError("The team cannot change.")
            return self.instance.team
        user = self.context["request"].user
        return team_for_submission(user=user, slug=slug, viewers_may_not=VIEWERS_MAY_NOT)

    def validate(self, attrs):
        if self.instance is not None:
            attrs.pop("team", None)
        elif "team" not in attrs:
            user = self.context["request"].user
            teams = list(team_list_submittable(user=user)[:2])
            if not teams and team_list_visible(user=user).exists():
                raise PermissionDenied(VIEWERS_MAY_NOT)
            if len(teams) != 1:
                raise serializers.ValidationError(
                    {"team": ["Say which team." if teams else "You are in no team that submits."]}
                )
            attrs["team"] = teams[0]
        return attrs


class WorkflowStepOutSerializer(serializers.ModelSerializer):
    job = serializers.IntegerField(source="job_id")
    status = serializers.ChoiceField(source="job.status", choices=JobStatus.choices)
    pending_reason = serializers.ChoiceField(
        source="job.pending_reason", choices=PendingReason.choices
    )
    cancel_reason = serializers.CharField(source="job.cancel_reason")
    started_at = serializers.DateTimeField(source="job.started_at", allow_null=True)
    finished_at = serializers.DateTimeField(source="job.finished_at", allow_null=True)

    class Meta:
        model = WorkflowStep
        fields = [
            "name",
            "job",
            "definition",
            "depends_on",
            "trigger_rule",
            "status",
            "pending_reason",
            "cancel_reason",
            "started_at",
            "finished_at",
        ]


class WorkflowSerializer(serializers.ModelSerializer):
    team = serializers.CharField(source="team.slug")
    step_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Workflow
        fields = [
            "id",
            "team",
            "name",
            "status",
            "parameters",
            "max_parallel",
            "step_count",
            "created_at",
            "finished_at",
        ]


class WorkflowDetailSerializer(WorkflowSerializer):
    steps = WorkflowStepOutSerializer(many=True, read_only=True)

    class Meta(WorkflowSerializer.Meta):
        fields = [*WorkflowSerializer.Meta.fields, "steps"]


class WorkflowFilter(django_filters.FilterSet):
    team = django_filters.CharFilter(field_name="team__slug")
    status = django_filters.ChoiceFilter(choices=WorkflowStatus.choices)
    name = django_filters.CharFilter()


DIAMOND = OpenApiExample(
    "A diamond with a parameter",
    value={
        "name": "nightly",
        "parameters": {"day": "2030-01-01"},
        "max_parallel": 2,
        "steps": [
            {"name": "extract", "job": {"command": ["echo", "{{ params.day }}"]}},
            {"name": "left", "definition": 3, "depends_on": ["extract"]},
            {"name": "right", "job": {"command": ["true"]}, "depends_on": ["extract"]},
            {
                "name": "report",
                "job": {"command": ["true"]},
                "depends_on": ["left", "right"],
                "trigger_rule": "all_finished",
            },
        ],
    },
    request_only=True,
)
CHANGED = {200: WorkflowDetailSerializer, 400: refused("The workflow's state does not allow it.")}


@extend_schema_view(
    create=extend_schema(
        request=WorkflowCreateSerializer,
        responses={201: WorkflowDetailSerializer},
        examples=[DIAMOND],
    ),
    retrieve=extend_schema(responses=WorkflowDetailSerializer),
    cancel=extend_schema(request=None, responses=CHANGED),
    retry=extend_schema(request=None, responses=CHANGED),
)
class WorkflowViewSet(
    ChangeableObjectMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    viewers_may_not_change = VIEWERS_MAY_NOT
    serializer_class = WorkflowSerializer
    filterset_class = WorkflowFilter
    pagination_class = CursorPagination
    queryset = Workflow.objects.none()  # the schema's model; requests use get_queryset

    def get_queryset(self):
        return workflow_list_visible(user=self.request.user)

    def list(self, request):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        workflows_count_steps(page)
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    def _detail(self, workflow, code=status.HTTP_200_OK):
        workflow = (
            self.get_queryset()
            .annotate(step_count=Count("steps"))
            .prefetch_related("steps__job")
            .get(pk=workflow.pk)
        )
        return Response(WorkflowDetailSerializer(workflow).data, status=code)

    def create(self, request):
        serializer = WorkflowCreateSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        workflow = workflow_create(user=request.user, **serializer.validated_data)
        return self._detail(workflow, status.HTTP_201_CREATED)

    def retrieve(self, request, pk=None):
        return self._detail(self.get_object())

    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Cancel every unfinished step."""
        return self._detail(
            workflow_cancel(workflow=self.get_changeable_object(), user=request.user)
        )

    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        """Run the failed and cancelled steps again, with everything downstream of them."""
        return self._detail(
            workflow_retry(workflow=self.get_changeable_object(), user=request.user)
        )


class WorkflowTemplateSerializer(serializers.ModelSerializer):
    team = serializers.CharField(source="team.slug")
    steps = serializers.ListField(child=serializers.DictField())

    class Meta:
        model = WorkflowTemplate
        fields = [
            "id",
            "team",
            "name",
            "parameters",
            "max_parallel",
            "steps",
            "created_at",
            "updated_at",
        ]


class TemplateSubmitSerializer(SpecLimitsMixin, StrictSerializer):
    name = serializers.CharField(max_length=200, required=False, default="")
    parameters = serializers.DictField(
        required=False, default=dict, help_text="Over the template's default parameters"
    )


class WorkflowTemplateFilter(django_filters.FilterSet):
    team = django_filters.CharFilter(field_name="team__slug")
    name = django_filters.CharFilter()


TEMPLATE_CHANGED = {200: WorkflowTemplateSerializer}


@extend_schema_view(
    create=extend_schema(
        request=WorkflowCreateSerializer, responses={201: WorkflowTemplateSerializer}
    ),
    update=extend_schema(request=WorkflowCreateSerializer, responses=TEMPLATE_CHANGED),
    partial_update=extend_schema(request=WorkflowCreateSerializer, responses=TEMPLATE_CHANGED),
    destroy=extend_schema(responses={204: None, 400: refused("Schedules use this template.")}),
    submit=extend_schema(
        request=TemplateSubmitSerializer, responses={201: WorkflowDetailSerializer}
    ),
)
class WorkflowTemplateViewSet(
    ChangeableObjectMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    viewers_may_not_change = VIEWERS_MAY_NOT
    serializer_class = WorkflowTemplateSerializer
    filterset_class = WorkflowTemplateFilter
    queryset = WorkflowTemplate.objects.none()  # the schema's model; requests use get_queryset

    def get_queryset(self):
        return workflow_template_list_visible(user=self.request.user)

    def _detail(self, template, code=status.HTTP_200_OK):
        template = self.get_queryset().get(pk=template.pk)
        return Response(WorkflowTemplateSerializer(template).data, status=code)

    def create(self, request):
        serializer = WorkflowCreateSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        fields = dict(serializer.validated_data)
        template = workflow_template_save(team=fields.pop("team"), fields=fields)
        return self._detail(template, status.HTTP_201_CREATED)

    def update(self, request, pk=None, partial=False):
        template = self.get_changeable_object()
        serializer = WorkflowCreateSerializer(
            template, data=request.data, partial=partial, context={"request": request}
        )
        serializer.is_valid(raise_exception=True)
        fields = dict(serializer.validated_data)
        return self._detail(
            workflow_template_save(template=template, team=template.team, fields=fields)
        )

    def partial_update(self, request, pk=None):
        return self.update(request, pk, partial=True)

    def destroy(self, request, pk=None):
        workflow_template_delete(template=self.get_changeable_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=True, methods=["post"])
    def submit(self, request, pk=None):
        """A workflow made from this template, with these parameters over its defaults."""
        template = self.get_changeable_object()
        serializer = TemplateSubmitSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        workflow = workflow_template_submit(
            template=template, user=request.user, **serializer.validated_data
        )
        workflow = (
            workflow_list_visible(user=request.user)
            .annotate(step_count=Count("steps"))
            .prefetch_related("steps__job")
            .get(pk=workflow.pk)
        )
        return Response(WorkflowDetailSerializer(workflow).data, status=status.HTTP_201_CREATED)
