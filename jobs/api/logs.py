"""Logs as the API serves them: an attempt's (`GET /api/jobs/{id}/logs/`, whole or
followed) and the lines of every visible attempt that contain a text (`GET /api/logs/`).
Both read what node agents shipped to the database."""

from datetime import UTC

from django.http import StreamingHttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param

from ..log_reading import LogSearch, attempt_log, log_line_search
from ..models import Job
from ..selectors import execution_list_for_job

# The largest values of PostgreSQL's integer and bigint: a larger id matches nothing, and
# must be a 400, not a database error.
MAX_INT, MAX_BIGINT = 2**31 - 1, 2**63 - 1


class AttemptLogQuerySerializer(serializers.Serializer):
    attempt = serializers.IntegerField(
        min_value=1,
        max_value=MAX_INT,
        required=False,
        help_text="The attempt's number; default the latest.",
    )
    task = serializers.IntegerField(
        min_value=0,
        max_value=MAX_INT,
        default=0,
        help_text="A gang's task, by its index; default task 0 (the only one of other jobs).",
    )
    follow = serializers.BooleanField(
        default=False,
        help_text=(
            "Keep the answer open and send the attempt's new output as it is printed, "
            "until the attempt ends."
        ),
    )


def attempt_log_response(*, job: Job, query) -> StreamingHttpResponse:
    """The log of one attempt (of one of its tasks, for a gang) as plain text, streamed;
    followed while it runs if asked."""
    params = AttemptLogQuerySerializer(data=query)
    params.is_valid(raise_exception=True)
    attempt, follow = params.validated_data.get("attempt"), params.validated_data["follow"]
    executions = execution_list_for_job(job=job).filter(task_index=params.validated_data["task"])
    if attempt is not None:
        executions = executions.filter(attempt=attempt)
    execution = executions.last()
    if execution is None:
        raise NotFound("No such attempt." if attempt else "The job has not run yet.")
    response = StreamingHttpResponse(
        attempt_log(execution=execution, follow=follow),
        content_type="text/plain; charset=utf-8",
    )
    if follow:
        # Each piece as it comes: no proxy buffering, no cached copy.
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
    return response


class UtcDateTimeField(serializers.DateTimeField):
    """A time, in UTC: PostgreSQL refuses offsets past 15:59, which ISO 8601 allows."""

    def to_internal_value(self, value):
        value = super().to_internal_value(value)
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise serializers.ValidationError("Out of range.") from None


class LogSearchQuerySerializer(serializers.Serializer):
    q = serializers.CharField(
        min_length=3,
        max_length=200,
        trim_whitespace=False,
        help_text="The text to find in log lines, ignoring case; at least 3 characters.",
    )
    team = serializers.SlugField(required=False, help_text="A team's slug.")
    queue = serializers.CharField(required=False, help_text="A queue's name.")
    definition = serializers.IntegerField(required=False, min_value=1, max_value=MAX_BIGINT)
    job = serializers.IntegerField(required=False, min_value=1, max_value=MAX_BIGINT)
    since = UtcDateTimeField(required=False, help_text="Shipped at or after.")
    until = UtcDateTimeField(required=False, help_text="Shipped before.")
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=500, default=100)
    before = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_BIGINT,
        help_text="From the `next` link of the previous page.",
    )

    def validate_q(self, value):
        if "\x00" in value:
            raise serializers.ValidationError("Must not contain a NUL character.")
        if len(value.strip()) < 3:
            raise serializers.ValidationError("At least 3 characters besides spaces.")
        return value


class LogLineSerializer(serializers.Serializer):
    job = serializers.IntegerField()
    attempt = serializers.IntegerField()
    line = serializers.IntegerField(help_text="The line's number in its attempt's log, from 1.")
    text = serializers.CharField()
    shipped_at = serializers.DateTimeField()


class LogSearchPageSerializer(serializers.Serializer):
    next = serializers.URLField(allow_null=True)
    results = LogLineSerializer(many=True)


class LogSearchView(GenericAPIView):
    """Lines of the caller's teams' logs that contain a text, newest first."""

    pagination_class = None
    filter_backends = []

    @extend_schema(parameters=[LogSearchQuerySerializer], responses=LogSearchPageSerializer)
    def get(self, request):
        params = LogSearchQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        query = dict(params.validated_data)
        limit = query.pop("page_size")
        lines, before = log_line_search(
            user=request.user, search=LogSearch(text=query.pop("q"), **query), limit=limit
        )
        url = request.build_absolute_uri()
        next_url = replace_query_param(url, "before", before) if before is not None else None
        return Response(LogSearchPageSerializer({"next": next_url, "results": lines}).data)
