"""`/api/jobs/`: submit, list, detail and attempts of jobs."""

import json
from decimal import Decimal
from pathlib import Path

import django_filters
from django.db.models import Q
from django.http import FileResponse, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.response import Response

from accounts.audit import audit_describe
from accounts.selectors import team_list_submittable, team_list_visible
from resources.models import DEFAULT_QUEUE_NAME
from scheduler_site.schema import refused
from scheduler_site.serializers import ResourceAmountsSerializer, StrictSerializer

from .models import Job, JobExecution, JobKind, JobRetry, JobStatus, PendingReason
from .selectors import execution_list_for_job, job_list_visible
from .services import job_acknowledge, job_cancel, job_requeue, job_submit

MAX_ARGV = 256
MAX_ARG_LENGTH = 8192
MAX_ENV = 128
MAX_SELECTOR = 32
MAX_PARAMETERS_BYTES = 64 * 1024
# PostgreSQL's text and jsonb cannot hold NUL; DRF's CharField refuses it, JSON keys need this.
NO_NUL = "Null characters are not allowed."
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


def _contains_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(v) for v in value)
    return False


class JobSubmitSerializer(StrictSerializer):
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
    parameters = serializers.DictField(
        required=False, default=dict, help_text="Keyword arguments of a callable; JOB_PARAMETERS"
    )
    env = serializers.DictField(
        child=serializers.CharField(
            max_length=MAX_ARG_LENGTH, allow_blank=True, trim_whitespace=False
        ),
        required=False,
        default=dict,
    )
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
    idempotency_key = serializers.CharField(max_length=200, required=False, default="")
    not_before = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def validate_env(self, value):
        if len(value) > MAX_ENV:
            raise serializers.ValidationError(f"At most {MAX_ENV} variables.")
        for key in value:
            if not key or "=" in key or "\x00" in key or len(key) > 256:
                raise serializers.ValidationError(f"Invalid variable name: {key[:64]!r}.")
        return value

    def validate_parameters(self, value):
        if len(json.dumps(value)) > MAX_PARAMETERS_BYTES:
            raise serializers.ValidationError(f"At most {MAX_PARAMETERS_BYTES} bytes as JSON.")
        if _contains_nul(value):
            raise serializers.ValidationError(NO_NUL)
        return value

    def validate_node_selector(self, value):
        if len(value) > MAX_SELECTOR:
            raise serializers.ValidationError(f"At most {MAX_SELECTOR} labels.")
        if any("\x00" in key for key in value):
            raise serializers.ValidationError(NO_NUL)
        return value

    def validate_team(self, slug):
        user = self.context["request"].user
        team = team_list_submittable(user=user).filter(slug=slug).first()
        if team is None:
            if team_list_visible(user=user).filter(slug=slug).exists():
                raise PermissionDenied(VIEWERS_MAY_NOT_SUBMIT)
            raise serializers.ValidationError("No team with this slug that you may submit to.")
        return team

    def validate(self, attrs):
        if attrs["kind"] == JobKind.COMMAND:
            if "callable" in attrs:
                raise serializers.ValidationError({"callable": ['Only for kind "callable".']})
            if not attrs.get("command"):
                raise serializers.ValidationError({"command": ["This field is required."]})
        else:
            if "command" in attrs:
                raise serializers.ValidationError({"command": ['Only for kind "command".']})
            if not attrs.get("callable"):
                raise serializers.ValidationError({"callable": ["This field is required."]})
        if "team" not in attrs:
            user = self.context["request"].user
            teams = list(team_list_submittable(user=user)[:2])
            if not teams and team_list_visible(user=user).exists():
                raise PermissionDenied(VIEWERS_MAY_NOT_SUBMIT)
            if not teams:
                raise serializers.ValidationError(
                    {"team": ["You are not in any team that may submit jobs."]}
                )
            if len(teams) > 1:
                raise serializers.ValidationError(
                    {"team": ["You may submit for several teams; say which one."]}
                )
            attrs["team"] = teams[0]
        resources = attrs.pop("resources", None) or ResourcesSerializer().to_internal_value({})
        attrs["cpu_millis"] = int(resources["cpu"] * 1000)
        attrs["memory_mb"] = resources["memory_mb"]
        attrs["gpu"] = resources["gpu"]
        return attrs


class JobSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    team = serializers.CharField(source="team.slug")
    kind = serializers.ChoiceField(choices=JobKind.choices)
    command = serializers.ListField(child=serializers.CharField())
    callable = serializers.CharField()
    parameters = serializers.DictField()
    status = serializers.ChoiceField(choices=JobStatus.choices)
    pending_reason = serializers.ChoiceField(choices=PendingReason.choices)
    node = serializers.SerializerMethodField()
    attempts = serializers.IntegerField()
    exit_code = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()
    output_tail = serializers.SerializerMethodField()
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

    def get_dead_letter(self, job) -> bool:
        return job.status == JobStatus.FAILED and job.acknowledged_at is None

    def _last(self, job, field):
        execution = job.last_execution
        return getattr(execution, field) if execution is not None else None

    def get_node(self, job) -> str | None:
        return job.last_execution.node.name if job.last_execution is not None else None

    def get_exit_code(self, job) -> int | None:
        return self._last(job, "exit_code")

    def get_error(self, job) -> str:
        return self._last(job, "error") or ""

    def get_output_tail(self, job) -> str:
        return self._last(job, "log_tail") or ""

    @extend_schema_field(ResourceAmountsSerializer)
    def get_resources(self, job) -> dict:
        return {"cpu": job.cpu_millis / 1000, "memory_mb": job.memory_mb, "gpu": job.gpu}


class RetrySerializer(serializers.ModelSerializer):
    requested_by = serializers.CharField(source="requested_by.username", default=None)

    class Meta:
        model = JobRetry
        fields = ["attempt", "reason", "due_at", "requested_by", "created_at"]


class JobDetailSerializer(JobSerializer):
    retries = RetrySerializer(many=True)


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
    queue = django_filters.CharFilter(field_name="queue__name")
    team = django_filters.CharFilter(field_name="team__slug")
    node = django_filters.CharFilter(method="filter_node")
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    dead_letter = django_filters.BooleanFilter(method="filter_dead_letter")

    def filter_dead_letter(self, queryset, name, value):
        dead = Q(status=JobStatus.FAILED, acknowledged_at__isnull=True)
        return queryset.filter(dead) if value else queryset.exclude(dead)

    def filter_node(self, queryset, name, value):
        return queryset.filter(Q(last_execution__node__name=value))


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
CHANGED = {200: JobDetailSerializer, 400: refused("The job's status does not allow it.")}


@extend_schema_view(
    create=extend_schema(
        request=JobSubmitSerializer,
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
    queryset = Job.objects.none()  # the schema's model; requests use get_queryset

    def get_queryset(self):
        jobs = job_list_visible(user=self.request.user)
        return jobs if self.action == "list" else jobs.prefetch_related("retries__requested_by")

    def create(self, request):
        serializer = JobSubmitSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        spec = dict(serializer.validated_data)
        team = spec.pop("team")
        submission = job_submit(team=team, spec=spec, user=request.user)
        job = self.get_queryset().get(pk=submission.job.pk)
        return Response(
            JobSerializer(job).data,
            status=status.HTTP_201_CREATED if submission.created else status.HTTP_200_OK,
        )

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
