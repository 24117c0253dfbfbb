"""How a job is written as JSON, declared once in JOB_FIELDS: each field's JSON name, its
type in the OpenAPI schema, the columns it is written from and how.

From that one table come the list's row writer (`job_rows` + `job_json`: plain
`values()` rows written straight to dicts, as a page of 50 jobs through DRF's field walk
over model instances spent most of its time there) and `JobSerializer`, which declares
the table's fields for the schema and writes a loaded job through the same code. Adding
a field is one line in the table."""

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any

from django.contrib.postgres.expressions import ArraySubquery
from django.db.models import BooleanField, ExpressionWrapper, OuterRef, QuerySet
from django.db.models.functions import JSONObject
from django.utils import timezone
from rest_framework import serializers

from common.serializers import ResourceAmountsSerializer

from ..models import (
    DEAD_LETTER,
    DependencyCondition,
    Job,
    JobDependency,
    JobKind,
    JobRetry,
    JobStatus,
    OnUnsatisfied,
    PendingReason,
)
from ..selectors import array_task_counts


def iso_datetime(value: datetime | None) -> str | None:
    """As DRF's DateTimeField writes it: ISO 8601 in the current time zone, UTC as Z."""
    if value is None:
        return None
    text = timezone.localtime(value).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _strings(values: list) -> list[str]:
    return [str(value) for value in values]


def _or_empty(text: str | None) -> str:
    return text or ""


def _resources(cpu_millis: int, memory_mb: int, gpu: int) -> dict:
    return {"cpu": cpu_millis / 1000, "memory_mb": memory_mb, "gpu": gpu}


def _array(count: int | None, parallelism: int | None) -> dict | None:
    return None if count is None else {"count": count, "parallelism": parallelism}


class ArrayFiguresSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    parallelism = serializers.IntegerField()


@dataclass(frozen=True)
class JobField:
    name: str  # the JSON key
    schema: serializers.Field  # its type in the OpenAPI schema
    columns: tuple[str, ...]  # paths through the job's relations, or a COMPUTED name
    write: Callable[..., Any] | None  # the columns' values to the JSON value; None: as is


def field(name: str, schema: serializers.Field, *columns: str, write=None) -> JobField:
    return JobField(name, schema, columns or (name,), write)


# Values the database works out for the list, each with the Job property that answers
# the same for a job already loaded: both are the model's own spelling of the rule.
COMPUTED = {
    "dead_letter": (ExpressionWrapper(DEAD_LETTER, output_field=BooleanField()), "is_dead_letter"),
    "depends_on": (
        ArraySubquery(
            JobDependency.objects.filter(job=OuterRef("pk"))
            .order_by("upstream_id")
            .values(json=JSONObject(job="upstream_id", on="on"))
        ),
        "depends_on",
    ),
}


class DependencyOutSerializer(serializers.Serializer):
    job = serializers.IntegerField()
    on = serializers.ChoiceField(choices=DependencyCondition.choices)


JOB_FIELDS = (
    field("id", serializers.IntegerField()),
    field("name", serializers.CharField()),
    field("team", serializers.CharField(), "team__slug"),
    field(
        "definition",
        serializers.IntegerField(
            allow_null=True, help_text="Id of the definition it was made from."
        ),
        "definition_id",
    ),
    field("kind", serializers.ChoiceField(choices=JobKind.choices)),
    field("command", serializers.ListField(child=serializers.CharField()), write=_strings),
    field("callable", serializers.CharField()),
    field("parameters", serializers.DictField()),
    field("status", serializers.ChoiceField(choices=JobStatus.choices)),
    field("pending_reason", serializers.ChoiceField(choices=PendingReason.choices)),
    # Of the latest attempt; null or empty before the first.
    field(
        "node",
        serializers.CharField(allow_null=True, read_only=True),
        "last_execution__node__name",
    ),
    field("attempts", serializers.IntegerField()),
    field(
        "exit_code",
        serializers.IntegerField(allow_null=True, read_only=True),
        "last_execution__exit_code",
    ),
    field(
        "error",
        serializers.CharField(default="", read_only=True),
        "last_execution__error",
        write=_or_empty,
    ),
    field(
        "output_tail",
        serializers.CharField(default="", read_only=True),
        "last_execution__log_tail",
        write=_or_empty,
    ),
    field(
        "resources",
        ResourceAmountsSerializer(read_only=True),
        *("cpu_millis", "memory_mb", "gpu"),
        write=_resources,
    ),
    field("queue", serializers.CharField(), "queue__name"),
    field("priority", serializers.IntegerField()),
    field("max_retries", serializers.IntegerField()),
    field("timeout_seconds", serializers.IntegerField(allow_null=True)),
    field("cpu_time_limit_seconds", serializers.IntegerField(allow_null=True)),
    field("node_selector", serializers.DictField()),
    field("idempotency_key", serializers.CharField()),
    field("not_before", serializers.DateTimeField(allow_null=True), write=iso_datetime),
    field("created_at", serializers.DateTimeField(), write=iso_datetime),
    field("started_at", serializers.DateTimeField(allow_null=True), write=iso_datetime),
    field("finished_at", serializers.DateTimeField(allow_null=True), write=iso_datetime),
    field("cancel_requested_at", serializers.DateTimeField(allow_null=True), write=iso_datetime),
    field("dead_letter", serializers.BooleanField(read_only=True)),
    field("acknowledged_at", serializers.DateTimeField(allow_null=True), write=iso_datetime),
    field("depends_on", DependencyOutSerializer(many=True, read_only=True)),
    field("on_unsatisfied", serializers.ChoiceField(choices=OnUnsatisfied.choices)),
    field("cancel_reason", serializers.CharField()),
    field(
        "workflow",
        serializers.IntegerField(allow_null=True, help_text="Id of its workflow, if a step."),
        "workflow_id",
    ),
    field("concurrency_key", serializers.CharField()),
    field("tasks", serializers.IntegerField()),
    field(
        "array",
        ArrayFiguresSerializer(allow_null=True, read_only=True),
        *("array_count", "array_parallelism"),
        write=_array,
    ),
    field(
        "array_parent",
        serializers.IntegerField(allow_null=True, help_text="The array job of an array task."),
        "array_parent_id",
    ),
    field("array_index", serializers.IntegerField(allow_null=True)),
    field("deadline", serializers.DateTimeField(allow_null=True), write=iso_datetime),
    field("preemptible", serializers.BooleanField()),
    field(
        "preemptions",
        serializers.IntegerField(help_text="Attempts preempted; they use no retry."),
    ),
)

# Every column read, once each, in the table's order.
COLUMNS = tuple(dict.fromkeys(column for f in JOB_FIELDS for column in f.columns))


def _reader(f: JobField) -> Callable[[Mapping], Any]:
    """One field's value from a row. itemgetter for the plain columns, which are most of
    them: it runs in C, and this runs for every field of every job listed."""
    if f.write is None:
        return itemgetter(f.columns[0])
    write = f.write
    if len(f.columns) == 1:
        column = f.columns[0]
        return lambda row: write(row[column])
    values = itemgetter(*f.columns)
    return lambda row: write(*values(row))


READERS = tuple((f.name, _reader(f)) for f in JOB_FIELDS)
# Where a loaded job holds each column: COMPUTED ones come from the model's property.
LOADED_PATHS = tuple((c, COMPUTED[c][1] if c in COMPUTED else c) for c in COLUMNS)


def job_rows(jobs: QuerySet[Job]) -> QuerySet:
    """The jobs as rows of COLUMNS (dicts, no model instances), for `job_json`."""
    computed = {name: expression for name, (expression, _) in COMPUTED.items()}
    return jobs.annotate(**computed).values(*COLUMNS)


def job_json(row: Mapping) -> dict:
    """A job as JSON from a row of COLUMNS."""
    return {name: read(row) for name, read in READERS}


def follow(obj, path: str):
    """`job.last_execution.node.name` for "last_execution__node__name"; None past a None."""
    for name in path.split("__"):
        if obj is None:
            return None
        obj = getattr(obj, name)
    return obj


def job_columns(job: Job) -> dict:
    """A loaded job's row of COLUMNS, as `job_rows` would have read it."""
    return {column: follow(job, path) for column, path in LOADED_PATHS}


# A job as the API answers it: the schema sees JOB_FIELDS' fields, and a loaded job is
# written by `job_json`, as the list writes its rows. (Comments, not docstrings, on these
# serializers: drf-spectacular would show a docstring as the schema's description.)
class JobSerializer(serializers.Serializer):
    def get_fields(self):
        declared = {f.name: copy.deepcopy(f.schema) for f in JOB_FIELDS}
        return {**declared, **super().get_fields()}

    def to_representation(self, job):
        return job_json(job_columns(job))


class RetrySerializer(serializers.ModelSerializer):
    requested_by = serializers.CharField(source="requested_by.username", default=None)

    class Meta:
        model = JobRetry
        fields = ["attempt", "reason", "due_at", "requested_by", "created_at"]


# A single job's page: the job and the retries asked of it; an array job's tasks counted
# by status.
class JobDetailSerializer(JobSerializer):
    retries = RetrySerializer(many=True)
    array_tasks = serializers.DictField(
        child=serializers.IntegerField(), allow_null=True, read_only=True
    )
    held_at = serializers.DateTimeField(
        allow_null=True, read_only=True, help_text="An array job held whole: since when."
    )

    def to_representation(self, job):
        retries = RetrySerializer(job.retries.all(), many=True).data
        tasks = None if job.array_count is None else array_task_counts(array=job)
        held = job.held_at and serializers.DateTimeField().to_representation(job.held_at)
        return {
            **super().to_representation(job),
            "retries": retries,
            "array_tasks": tasks,
            "held_at": held or None,
        }
