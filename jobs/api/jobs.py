"""`/api/jobs/`: submit, list, detail, attempts and logs of jobs; change a pending one;
cancel, hold, release, retry and acknowledge them; why a job waits."""

from collections.abc import Mapping

import django_filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from accounts.models import Team
from accounts.permissions import ChangeableObjectMixin
from common.filters import IsoDateTimeFilter
from common.pagination import CursorPagination
from common.schema import refused
from common.serializers import StrictSerializer
from nodes.models import Node
from resources.models import Queue

from ..models import Job, JobExecution, JobStatus
from ..scheduling.preemption import job_preemption_preview
from ..selectors import execution_list_for_job, job_list_visible
from ..services.actions import job_acknowledge, job_cancel, job_hold, job_release, job_requeue
from ..services.arrays import MAX_ARRAY_COUNT, array_cancel, array_parallelism_set, array_retry
from ..services.changes import job_change
from ..services.definitions import definition_submit
from ..services.submission import Submission, job_submit
from ..why_pending import job_why_pending
from .logs import AttemptLogQuerySerializer, attempt_log_response
from .representation import JobDetailSerializer, JobSerializer, job_json, job_rows
from .specs import JobChangeSerializer, JobFromDefinitionSerializer, JobSubmitSerializer
from .why import JobWhySerializer


class ExecutionSerializer(serializers.ModelSerializer):
    node = serializers.CharField(source="node.name")

    class Meta:
        model = JobExecution
        fields = [
            "attempt",
            "task_index",
            "token",
            "node",
            "status",
            "exit_code",
            "error",
            "reserved_at",
            "started_at",
            "finished_at",
            "log_tail",
            "preempted_by",
            "gpu_ids",
        ]
        extra_kwargs = {"preempted_by": {"help_text": "Id of the job it was preempted for."}}


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
    workflow = django_filters.NumberFilter(field_name="workflow_id")
    mine = django_filters.BooleanFilter(
        method="filter_mine", label="true: only the jobs the caller submitted."
    )

    def filter_mine(self, queryset, name, value):
        user = self.request.user
        return queryset.filter(submitted_by=user) if value else queryset.exclude(submitted_by=user)

    def filter_dead_letter(self, queryset, name, value):
        return queryset.dead_letter() if value else queryset.not_dead_letter()

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
    OpenApiExample(
        "From a definition",
        value={"definition": 3, "parameters": {"day": "2030-01-01"}, "priority": 5},
        request_only=True,
    ),
]
CHANGED = {200: JobDetailSerializer, 400: refused("The job's status does not allow it.")}


class ParallelismSerializer(StrictSerializer):
    parallelism = serializers.IntegerField(
        min_value=1, max_value=MAX_ARRAY_COUNT, help_text="Most tasks running at once."
    )


class RetryOptionsSerializer(serializers.Serializer):
    failed_only = serializers.BooleanField(
        default=False, help_text="An array job: re-run its failed tasks only, not cancelled ones."
    )


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
    partial_update=extend_schema(request=JobChangeSerializer, responses=CHANGED),
    cancel=extend_schema(request=None, responses=CHANGED),
    retry=extend_schema(request=None, parameters=[RetryOptionsSerializer], responses=CHANGED),
    parallelism=extend_schema(request=ParallelismSerializer, responses=CHANGED),
    acknowledge=extend_schema(request=None, responses=CHANGED),
    executions=extend_schema(responses=ExecutionSerializer(many=True), filters=False),
    logs=extend_schema(
        parameters=[AttemptLogQuerySerializer],
        responses={(200, "text/plain"): OpenApiTypes.STR},
    ),
    why=extend_schema(responses=JobWhySerializer, filters=False),
)
class JobViewSet(
    ChangeableObjectMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    viewers_may_not_change = "Viewers may look at this team's jobs but not change them."
    serializer_class = JobSerializer
    filterset_class = JobFilter
    pagination_class = CursorPagination
    queryset = Job.objects.none()  # the schema's model; requests use get_queryset

    def get_queryset(self):
        jobs = job_list_visible(user=self.request.user)
        return jobs if self.action == "list" else jobs.prefetch_related("retries__requested_by")

    def list(self, request):
        page = self.paginate_queryset(job_rows(self.filter_queryset(self.get_queryset())))
        return self.get_paginated_response([job_json(row) for row in page])

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

    def partial_update(self, request, pk=None):
        """Change a pending job: its priority, resources, queue, node selector, time limit
        or retries. It keeps its place in its queue's order."""
        job = self.get_changeable_object()
        serializer = JobChangeSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        return self._changed(
            job_change(job=job, changes=serializer.validated_data, user=request.user)
        )

    def _changed(self, job):
        return Response(JobDetailSerializer(self.get_queryset().get(pk=job.pk)).data)

    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Cancel the job; an array job's every unfinished task."""
        job = self.get_changeable_object()
        if job.array_count is not None:
            return self._changed(array_cancel(array=job, user=request.user))
        return self._changed(job_cancel(job=job, user=request.user))

    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        """Run a failed or cancelled job again; for an array job, its failed and cancelled
        tasks (`?failed_only=true`: its failed ones)."""
        options = RetryOptionsSerializer(data=request.query_params)
        options.is_valid(raise_exception=True)
        failed_only = options.validated_data["failed_only"]
        job = self.get_changeable_object()
        if job.array_count is not None:
            return self._changed(array_retry(array=job, failed_only=failed_only, user=request.user))
        if failed_only:
            raise ValidationError({"failed_only": ["Only for an array job."]})
        if job.array_parent_id is not None:
            array_retry(array=job.array_parent, task=job, user=request.user)
            return self._changed(job)
        return self._changed(job_requeue(job=job, user=request.user))

    @action(detail=True, methods=["post", "patch"])
    def parallelism(self, request, pk=None):
        """Change how many of an array job's tasks run at once, while it runs."""
        job = self.get_changeable_object()
        serializer = ParallelismSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return self._changed(
            array_parallelism_set(
                array=job, parallelism=serializer.validated_data["parallelism"], user=request.user
            )
        )

    @action(detail=True, methods=["post"])
    def hold(self, request, pk=None):
        """Keep a pending job from being placed until it is released."""
        return self._changed(job_hold(job=self.get_changeable_object(), user=request.user))

    @action(detail=True, methods=["post"])
    def release(self, request, pk=None):
        """Let a held job be placed again."""
        return self._changed(job_release(job=self.get_changeable_object(), user=request.user))

    @action(detail=True, methods=["post"])
    def acknowledge(self, request, pk=None):
        return self._changed(job_acknowledge(job=self.get_changeable_object(), user=request.user))

    @action(detail=True, methods=["get"], pagination_class=None)
    def executions(self, request, pk=None):
        job = self.get_object()
        data = ExecutionSerializer(execution_list_for_job(job=job), many=True).data
        return Response(data)

    @action(detail=True, methods=["get"])
    def why(self, request, pk=None):
        """Why the job waits: its reason, its place in its queue, and each node's fit."""
        job = self.get_object()
        preemption = job_preemption_preview(job=job) if job.status == JobStatus.PENDING else None
        return Response(job_why_pending(job=job, preemption=preemption))

    @action(detail=True, methods=["get"])
    def logs(self, request, pk=None):
        """The log of one attempt (`?attempt=N`, default the latest) as plain text, from
        the database whatever node ran it; `?follow=true` streams it until it ends."""
        return attempt_log_response(job=self.get_object(), query=request.query_params)
