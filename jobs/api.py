"""`/api/jobs/`: submit, list, detail and attempts of jobs."""

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import django_filters
from django.db.models import Q
from django.http import FileResponse, HttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.response import Response

from accounts.audit import audit_describe
from accounts.models import Team
from accounts.selectors import team_list_submittable, team_list_visible
from nodes.models import Node
from resources.models import DEFAULT_QUEUE_NAME, Queue
from scheduler_site.filters import IsoDateTimeFilter
from scheduler_site.pagination import CursorPagination
from scheduler_site.schema import refused
from scheduler_site.serializers import ResourceAmountsSerializer, StrictSerializer

from .models import Job, JobExecution, JobKind, JobRetry, JobStatus, PendingReason
from .selectors import definition_list_visible, execution_list_for_job, job_list_visible
from .services import (
    Submission,
    definition_submit,
    job_acknowledge,
    job_cancel,
    job_requeue,
    job_spec_limit_errors,
    job_submit,
)

MAX_ARGV = 256
MAX_ARG_LENGTH = 8192
VIEWERS_MAY_NOT_SUBMIT = "Viewers may look at this team's jobs but not submit them."


class ResourcesSerializer(StrictSerializer):
    cpu = serializers.DecimalField(
        max_digits=9,
        decimal_places=3,
        min_value=Decimal("0.001"),
        default=Decimal(1),
        help_text="CPU cores, e.g. 0.5",
    )
    memory_mb = serializers.IntegerField(min_value=0, max_value=16 * 1024 * 1024, default=256)
    gpu = serializers.IntegerField(min_value=0, max_value=1024, default=0)


def _limit_errors(**field) -> list[str]:
    """The spec caps (jobs.services) on one field, as that field's errors."""
    return next(iter(job_spec_limit_errors(**field).values()), [])


class SpecLimitsMixin:
    """Field-level checks of the free-form spec fields, shared by every serializer that
    takes them; the services check the same caps again on what they finally store."""

    def validate_env(self, value):
        if errors := _limit_errors(env=value):
            raise serializers.ValidationError(errors)
        return value

    def validate_parameters(self, value):
        if errors := _limit_errors(parameters=value):
            raise serializers.ValidationError(errors)
        return value

    def validate_node_selector(self, value):
        if errors := _limit_errors(node_selector=value):
            raise serializers.ValidationError(errors)
        return value


def env_field(**kwargs):
    return serializers.DictField(
        child=serializers.CharField(
            max_length=MAX_ARG_LENGTH, allow_blank=True, trim_whitespace=False
        ),
        **kwargs,
    )


def parameters_field(**kwargs):
    return serializers.DictField(
        help_text="Keyword arguments of a callable; JOB_PARAMETERS", **kwargs
    )


class JobSpecSerializer(SpecLimitsMixin, StrictSerializer):
    """What to run and what it needs, for an inline job or a definition, and the team.

    With an instance (a definition being changed) missing fields keep their stored
    values and the team cannot change."""

    viewers_may_not = VIEWERS_MAY_NOT_SUBMIT

    team = serializers.SlugField(required=False, help_text="Team slug; optional with one team.")
    name = serializers.CharField(max_length=200)
    kind = serializers.ChoiceField(choices=JobKind.choices, default=JobKind.COMMAND)
    command = serializers.ListField(
        child=serializers.CharField(max_length=MAX_ARG_LENGTH, trim_whitespace=False),
        min_length=1,
        max_length=MAX_ARGV,
        required=False,
        help_text='argv, e.g. ["sh", "-c", "echo hello"]; for kind "command"',
    )
    callable = serializers.CharField(
        max_length=200, required=False, help_text="Dotted name allowed by JOB_CALLABLES"
    )
    parameters = parameters_field(required=False, default=dict)
    env = env_field(required=False, default=dict)
    resources = ResourcesSerializer(required=False)
    queue = serializers.SlugField(max_length=63, default=DEFAULT_QUEUE_NAME)
    priority = serializers.IntegerField(min_value=-1000, max_value=1000, default=0)
    max_retries = serializers.IntegerField(min_value=0, max_value=20, default=0)
    retry_backoff_seconds = serializers.IntegerField(min_value=0, max_value=86400, default=10)
    timeout_seconds = serializers.IntegerField(
        min_value=1, max_value=7 * 86400, required=False, allow_null=True, default=None
    )
    node_selector = serializers.DictField(
        child=serializers.CharField(max_length=63), required=False, default=dict
    )

    def validate_team(self, slug):
        if self.instance is not None:
            if slug != self.instance.team.slug:
                raise serializers.ValidationError("The team cannot change.")
            return self.instance.team
        user = self.context["request"].user
        team = team_list_submittable(user=user).filter(slug=slug).first()
        if team is None:
            if team_list_visible(user=user).filter(slug=slug).exists():
                raise PermissionDenied(self.viewers_may_not)
            raise serializers.ValidationError("No team with this slug that you may submit to.")
        return team

    def _validate_target(self, attrs):
        """A command job has a command and no callable; a callable job the reverse. When
        a change switches the kind, the other one is cleared."""
        stored = self.instance
        kind = attrs.get("kind", stored.kind if stored is not None else JobKind.COMMAND)
        kept = stored is not None and stored.kind == kind
        if kind == JobKind.COMMAND:
            if "callable" in attrs:
                raise serializers.ValidationError({"callable": ['Only for kind "callable".']})
            if not (attrs.get("command") or (kept and "command" not in attrs)):
                raise serializers.ValidationError({"command": ["This field is required."]})
            if stored is not None:
                attrs["callable"] = ""
        else:
            if "command" in attrs:
                raise serializers.ValidationError({"command": ['Only for kind "command".']})
            if not (attrs.get("callable") or (kept and "callable" not in attrs)):
                raise serializers.ValidationError({"callable": ["This field is required."]})
            if stored is not None:
                attrs["command"] = []

    def _validate_resources(self, attrs):
        if "resources" not in attrs and self.partial:
            return
        given = attrs.pop("resources", None) or {}
        if self.instance is not None and self.partial:
            resources = {
                "cpu": Decimal(self.instance.cpu_millis) / 1000,
                "memory_mb": self.instance.memory_mb,
                "gpu": self.instance.gpu,
            }
        else:
            resources = ResourcesSerializer().to_internal_value({})
        resources.update(given)
        attrs["cpu_millis"] = int(resources["cpu"] * 1000)
        attrs["memory_mb"] = resources["memory_mb"]
        attrs["gpu"] = resources["gpu"]

    def _default_team(self, attrs):
        user = self.context["request"].user
        teams = list(team_list_submittable(user=user)[:2])
        if not teams and team_list_visible(user=user).exists():
            raise PermissionDenied(self.viewers_may_not)
        if not teams:
            raise serializers.ValidationError(
                {"team": ["You are not in any team that may submit jobs."]}
            )
        if len(teams) > 1:
            raise serializers.ValidationError(
                {"team": ["You may submit for several teams; say which one."]}
            )
        attrs["team"] = teams[0]

    def validate(self, attrs):
        self._validate_target(attrs)
        if self.instance is not None:
            attrs.pop("team", None)  # validate_team made sure it is the same
        elif "team" not in attrs:
            self._default_team(attrs)
        self._validate_resources(attrs)
        return attrs


class JobSubmitSerializer(JobSpecSerializer):
    idempotency_key = serializers.CharField(max_length=200, required=False, default="")
    not_before = serializers.DateTimeField(required=False, allow_null=True, default=None)


class DefinitionOverridesSerializer(SpecLimitsMixin, StrictSerializer):
    """What a job made from a definition may change: env and parameters are merged over
    the definition's, the others replace its values."""

    name = serializers.CharField(max_length=200, required=False)
    parameters = parameters_field(required=False)
    env = env_field(required=False)
    priority = serializers.IntegerField(min_value=-1000, max_value=1000, required=False)
    idempotency_key = serializers.CharField(max_length=200, required=False)
    not_before = serializers.DateTimeField(required=False, allow_null=True)


class JobFromDefinitionSerializer(DefinitionOverridesSerializer):
    """POST /api/jobs/ with `definition`: the spec comes from the definition."""

    definition = serializers.IntegerField(help_text="Id of a job definition of your team.")

    def validate_definition(self, pk):
        user = self.context["request"].user
        definition = definition_list_visible(user=user).filter(pk=pk).first()
        if definition is None:
            raise serializers.ValidationError("No definition with this id in your teams.")
        if not team_list_submittable(user=user).filter(pk=definition.team_id).exists():
            raise PermissionDenied(VIEWERS_MAY_NOT_SUBMIT)
        return definition


class JobSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    team = serializers.CharField(source="team.slug")
    definition = serializers.IntegerField(
        source="definition_id", allow_null=True, help_text="Id of the definition it was made from."
    )
    kind = serializers.ChoiceField(choices=JobKind.choices)
    command = serializers.ListField(child=serializers.CharField())
    callable = serializers.CharField()
    parameters = serializers.DictField()
    status = serializers.ChoiceField(choices=JobStatus.choices)
    pending_reason = serializers.ChoiceField(choices=PendingReason.choices)
    # Of the latest attempt; null or empty before the first.
    node = serializers.CharField(source="last_execution.node.name", allow_null=True, read_only=True)
    attempts = serializers.IntegerField()
    exit_code = serializers.IntegerField(
        source="last_execution.exit_code", allow_null=True, read_only=True
    )
    error = serializers.CharField(source="last_execution.error", default="", read_only=True)
    output_tail = serializers.CharField(
        source="last_execution.log_tail", default="", read_only=True
    )
    resources = serializers.SerializerMethodField()
    queue = serializers.CharField(source="queue.name")
    priority = serializers.IntegerField()
    max_retries = serializers.IntegerField()
    timeout_seconds = serializers.IntegerField(allow_null=True)
    node_selector = serializers.DictField()
    idempotency_key = serializers.CharField()
    not_before = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    cancel_requested_at = serializers.DateTimeField(allow_null=True)
    dead_letter = serializers.SerializerMethodField()
    acknowledged_at = serializers.DateTimeField(allow_null=True)

    # The columns a job is written from, as paths through its relations: the list reads
    # just these (values(), no model instances), a single job reads them off the instance.
    COLUMNS = (
        *("id", "name", "team__slug", "definition_id", "kind", "command", "callable"),
        *("parameters", "status"),
        *("pending_reason", "attempts", "cpu_millis", "memory_mb", "gpu", "queue__name"),
        *("priority", "max_retries", "timeout_seconds", "node_selector", "idempotency_key"),
        *("not_before", "created_at", "started_at", "finished_at", "cancel_requested_at"),
        *("acknowledged_at", "last_execution__node__name", "last_execution__exit_code"),
        *("last_execution__error", "last_execution__log_tail"),
    )

    @classmethod
    def represent(cls, row: dict) -> dict:
        """The declared fields' values from a row of COLUMNS, built directly: a page of the
        list holds 50 jobs, and DRF's field-by-field walk over model instances was most of
        its time. The declared fields still describe the shape; a test holds the two equal."""
        return {
            "id": row["id"],
            "name": row["name"],
            "team": row["team__slug"],
            "definition": row["definition_id"],
            "kind": row["kind"],
            "command": [str(arg) for arg in row["command"]],
            "callable": row["callable"],
            "parameters": row["parameters"],
            "status": row["status"],
            "pending_reason": row["pending_reason"],
            "node": row["last_execution__node__name"],
            "attempts": row["attempts"],
            "exit_code": row["last_execution__exit_code"],
            "error": row["last_execution__error"] or "",
            "output_tail": row["last_execution__log_tail"] or "",
            "resources": {
                "cpu": row["cpu_millis"] / 1000,
                "memory_mb": row["memory_mb"],
                "gpu": row["gpu"],
            },
            "queue": row["queue__name"],
            "priority": row["priority"],
            "max_retries": row["max_retries"],
            "timeout_seconds": row["timeout_seconds"],
            "node_selector": row["node_selector"],
            "idempotency_key": row["idempotency_key"],
            "not_before": iso_datetime(row["not_before"]),
            "created_at": iso_datetime(row["created_at"]),
            "started_at": iso_datetime(row["started_at"]),
            "finished_at": iso_datetime(row["finished_at"]),
            "cancel_requested_at": iso_datetime(row["cancel_requested_at"]),
            "dead_letter": row["status"] == JobStatus.FAILED and row["acknowledged_at"] is None,
            "acknowledged_at": iso_datetime(row["acknowledged_at"]),
        }

    def to_representation(self, job):
        return self.represent({column: follow(job, column) for column in self.COLUMNS})

    def get_dead_letter(self, job) -> bool:
        return job.status == JobStatus.FAILED and job.acknowledged_at is None

    @extend_schema_field(ResourceAmountsSerializer)
    def get_resources(self, job) -> dict:
        return {"cpu": job.cpu_millis / 1000, "memory_mb": job.memory_mb, "gpu": job.gpu}


def follow(obj, path: str):
    """`job.last_execution.node.name` for "last_execution__node__name"; None past a None."""
    for name in path.split("__"):
        if obj is None:
            return None
        obj = getattr(obj, name)
    return obj


def iso_datetime(value: datetime | None) -> str | None:
    """As DRF's DateTimeField writes it: ISO 8601 in the current time zone, UTC as Z."""
    if value is None:
        return None
    text = timezone.localtime(value).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class RetrySerializer(serializers.ModelSerializer):
    requested_by = serializers.CharField(source="requested_by.username", default=None)

    class Meta:
        model = JobRetry
        fields = ["attempt", "reason", "due_at", "requested_by", "created_at"]


class JobDetailSerializer(JobSerializer):
    retries = RetrySerializer(many=True)

    def to_representation(self, job):
        retries = RetrySerializer(job.retries.all(), many=True).data
        return {**super().to_representation(job), "retries": retries}


class ExecutionSerializer(serializers.ModelSerializer):
    node = serializers.CharField(source="node.name")

    class Meta:
        model = JobExecution
        fields = [
            "attempt",
            "token",
            "node",
            "status",
            "exit_code",
            "error",
            "reserved_at",
            "started_at",
            "finished_at",
            "log_tail",
        ]


class JobFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=JobStatus.choices)
    name = django_filters.CharFilter()
    # Names are turned into ids in a subquery, so that the list's indexes on (team, ...)
    # and (queue, ...) serve these filters; a join on the name would walk every job.
    queue = django_filters.CharFilter(method="filter_queue")
    team = django_filters.CharFilter(method="filter_team")
    definition = django_filters.NumberFilter(field_name="definition_id")
    node = django_filters.CharFilter(method="filter_node")
    created_after = IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    dead_letter = django_filters.BooleanFilter(method="filter_dead_letter")

    def filter_dead_letter(self, queryset, name, value):
        dead = Q(status=JobStatus.FAILED, acknowledged_at__isnull=True)
        return queryset.filter(dead) if value else queryset.exclude(dead)

    def filter_queue(self, queryset, name, value):
        return queryset.filter(queue_id=Queue.objects.filter(name=value).values("pk")[:1])

    def filter_team(self, queryset, name, value):
        return queryset.filter(team_id=Team.objects.filter(slug=value).values("pk")[:1])

    def filter_node(self, queryset, name, value):
        node = Node.objects.filter(name=value).values("pk")[:1]
        return queryset.filter(last_execution__node_id=node)


def submission_response(submission: Submission, *, user) -> Response:
    """201 with a new job, 200 with the first one when its idempotency key repeats."""
    job = job_list_visible(user=user).get(pk=submission.job.pk)
    return Response(
        JobSerializer(job).data,
        status=status.HTTP_201_CREATED if submission.created else status.HTTP_200_OK,
    )


JOB_EXAMPLES = [
    OpenApiExample(
        "A command",
        value={
            "name": "nightly-report",
            "command": ["sh", "-c", "echo hello"],
            "resources": {"cpu": 0.5, "memory_mb": 256, "gpu": 0},
            "max_retries": 2,
            "timeout_seconds": 600,
            "idempotency_key": "report-2030-01-01",
        },
        request_only=True,
    ),
    OpenApiExample(
        "A registered callable",
        value={
            "team": "blue",
            "name": "resize",
            "kind": "callable",
            "callable": "jobs.callables.sleep",
            "parameters": {"seconds": 1},
            "queue": "default",
            "node_selector": {"zone": "a"},
        },
        request_only=True,
    ),
]
JOB_EXAMPLES.append(
    OpenApiExample(
        "From a definition",
        value={"definition": 3, "parameters": {"day": "2030-01-01"}, "priority": 5},
        request_only=True,
    )
)
CHANGED = {200: JobDetailSerializer, 400: refused("The job's status does not allow it.")}


@extend_schema_view(
    create=extend_schema(
        request=PolymorphicProxySerializer(
            component_name="JobSubmission",
            serializers=[JobSubmitSerializer, JobFromDefinitionSerializer],
            resource_type_field_name=None,
        ),
        responses={
            201: OpenApiResponse(JobSerializer, description="Accepted."),
            200: OpenApiResponse(
                JobSerializer, description="The job first submitted with this idempotency key."
            ),
        },
        examples=JOB_EXAMPLES,
    ),
    retrieve=extend_schema(responses=JobDetailSerializer),
    cancel=extend_schema(request=None, responses=CHANGED),
    retry=extend_schema(request=None, responses=CHANGED),
    acknowledge=extend_schema(request=None, responses=CHANGED),
    executions=extend_schema(responses=ExecutionSerializer(many=True), filters=False),
    logs=extend_schema(
        parameters=[
            OpenApiParameter(
                "attempt", int, description="The attempt's number; default the latest."
            )
        ],
        responses={(200, "text/plain"): OpenApiTypes.STR},
    ),
)
class JobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = JobSerializer
    filterset_class = JobFilter
    pagination_class = CursorPagination
    queryset = Job.objects.none()  # the schema's model; requests use get_queryset

    def get_queryset(self):
        jobs = job_list_visible(user=self.request.user)
        return jobs if self.action == "list" else jobs.prefetch_related("retries__requested_by")

    def list(self, request):
        jobs = self.filter_queryset(self.get_queryset()).values(*JobSerializer.COLUMNS)
        page = self.paginate_queryset(jobs)
        return self.get_paginated_response([JobSerializer.represent(row) for row in page])

    def create(self, request):
        if isinstance(request.data, Mapping) and "definition" in request.data:
            serializer = JobFromDefinitionSerializer(
                data=request.data, context={"request": request}
            )
            serializer.is_valid(raise_exception=True)
            overrides = dict(serializer.validated_data)
            definition = overrides.pop("definition")
            submission = definition_submit(
                definition=definition, overrides=overrides, user=request.user
            )
        else:
            serializer = JobSubmitSerializer(data=request.data, context={"request": request})
            serializer.is_valid(raise_exception=True)
            spec = dict(serializer.validated_data)
            team = spec.pop("team")
            submission = job_submit(team=team, spec=spec, user=request.user)
        return submission_response(submission, user=request.user)

    def retrieve(self, request, pk=None):
        job = self.get_object()
        return Response(JobDetailSerializer(job).data)

    def get_changeable_object(self):
        """The job, if the caller may change it: 404 if they cannot see it, 403 for a viewer."""
        job = self.get_object()
        audit_describe(self.request, target=job)
        if not team_list_submittable(user=self.request.user).filter(pk=job.team_id).exists():
            raise PermissionDenied("Viewers may look at this team's jobs but not change them.")
        return job

    def _changed(self, job):
        return Response(JobDetailSerializer(self.get_queryset().get(pk=job.pk)).data)

    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        return self._changed(job_cancel(job=self.get_changeable_object(), user=request.user))

    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        return self._changed(job_requeue(job=self.get_changeable_object(), user=request.user))

    @action(detail=True, methods=["post"])
    def acknowledge(self, request, pk=None):
        return self._changed(job_acknowledge(job=self.get_changeable_object(), user=request.user))

    @action(detail=True, methods=["get"], pagination_class=None)
    def executions(self, request, pk=None):
        job = self.get_object()
        data = ExecutionSerializer(execution_list_for_job(job=job), many=True).data
        return Response(data)

    @action(detail=True, methods=["get"])
    def logs(self, request, pk=None):
        """The log of one attempt (`?attempt=N`, default the latest) as plain text."""
        job = self.get_object()
        executions = execution_list_for_job(job=job)
        attempt = request.query_params.get("attempt")
        if attempt is not None:
            if not attempt.isdecimal():
                raise ValidationError({"attempt": ["A whole number."]})
            executions = executions.filter(attempt=int(attempt))
        execution = executions.last()
        if execution is None:
            raise NotFound("No such attempt." if attempt else "The job has not run yet.")
        path = Path(execution.log_path) if execution.log_path else None
        if path is not None and path.is_file():
            return FileResponse(path.open("rb"), content_type="text/plain; charset=utf-8")
        # The log lives on the node's disk; from here only the kept tail can be shown.
        return HttpResponse(execution.log_tail, content_type="text/plain; charset=utf-8")
