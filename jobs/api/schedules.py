"""`/api/schedules/`: schedules of job definitions, their runs and their next fire times."""

from zoneinfo import ZoneInfo

import django_filters
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from accounts.permissions import (
    ChangeableObjectMixin,
    require_team_submitter,
    team_for_submission,
)
from common.schema import refused
from common.serializers import StrictSerializer

from ..models import ConcurrencyPolicy, JobSchedule, JobScheduleRun, MisfirePolicy
from ..schedule_backfill import schedule_backfill
from ..schedule_times import Timetable, describe
from ..schedules import (
    schedule_create,
    schedule_delete,
    schedule_pause,
    schedule_resume,
    schedule_update,
)
from ..selectors import schedule_list_visible, schedule_run_list, workflow_template_list_visible
from ..services.actions import JobStateError
from .specs import definition_for_submission

MAX_INTERVAL_SECONDS = 366 * 86400
MAX_PREVIEW = 100
RECENT_RUNS = 10
VIEWERS_MAY_NOT_SCHEDULE = "Viewers may look at this team's schedules but not change them."


class ScheduleWriteSerializer(StrictSerializer):
    team = serializers.SlugField(required=False, help_text="Team slug; default the definition's.")
    name = serializers.CharField(max_length=200)
    definition = serializers.IntegerField(
        required=False, help_text="Id of a job definition of the team."
    )
    workflow_template = serializers.IntegerField(
        required=False, help_text="Or the id of a workflow template of the team."
    )
    cron = serializers.CharField(
        max_length=200,
        required=False,
        allow_blank=True,
        allow_null=True,
        help_text='e.g. "30 2 * * 1-5"',
    )
    timezone = serializers.CharField(max_length=64, required=False, help_text="e.g. Europe/Berlin")
    interval_seconds = serializers.IntegerField(
        min_value=1, max_value=MAX_INTERVAL_SECONDS, required=False, allow_null=True
    )
    run_at = serializers.DateTimeField(required=False, allow_null=True)
    start_at = serializers.DateTimeField(required=False, allow_null=True)
    end_at = serializers.DateTimeField(required=False, allow_null=True)
    enabled = serializers.BooleanField(required=False)
    concurrency_policy = serializers.ChoiceField(choices=ConcurrencyPolicy.choices, required=False)
    misfire_policy = serializers.ChoiceField(choices=MisfirePolicy.choices, required=False)

    def validate_team(self, slug):
        if self.instance is not None:
            raise serializers.ValidationError("A schedule's team cannot change.")
        user = self.context["request"].user
        return team_for_submission(user=user, slug=slug, viewers_may_not=VIEWERS_MAY_NOT_SCHEDULE)

    def validate_definition(self, pk):
        user = self.context["request"].user
        return definition_for_submission(user=user, pk=pk, viewers_may_not=VIEWERS_MAY_NOT_SCHEDULE)

    def validate_workflow_template(self, pk):
        user = self.context["request"].user
        template = workflow_template_list_visible(user=user).filter(pk=pk).first()
        if template is None:
            raise serializers.ValidationError("No workflow template with this id in your teams.")
        require_team_submitter(
            user=user, team_id=template.team_id, refusal=VIEWERS_MAY_NOT_SCHEDULE
        )
        return template

    def validate(self, attrs):
        if self.instance is None and ("definition" in attrs) == ("workflow_template" in attrs):
            raise serializers.ValidationError(
                {"definition": ["Give exactly one of definition and workflow_template."]}
            )
        if self.instance is None and "team" not in attrs:
            attrs["team"] = (attrs.get("definition") or attrs["workflow_template"]).team
        template = attrs.get("workflow_template")
        if (
            template is not None
            and template.team_id != attrs.get("team", getattr(self.instance, "team", None)).pk
        ):
            raise serializers.ValidationError(
                {"workflow_template": ["No workflow template with this id in the team."]}
            )
        team = attrs.get("team") or getattr(self.instance, "team", None)
        definition = attrs.get("definition")
        if definition is not None and definition.team_id != team.pk:
            raise serializers.ValidationError(
                {"definition": ["No definition with this id in the schedule's team."]}
            )
        if "cron" in attrs and attrs["cron"] is None:
            attrs["cron"] = ""
        return attrs


class ScheduleRunSerializer(serializers.ModelSerializer):
    job_status = serializers.CharField(source="job.status", default=None)
    job_url = serializers.SerializerMethodField()

    class Meta:
        model = JobScheduleRun
        fields = [
            "due_at",
            "fired_at",
            "outcome",
            "job",
            "job_status",
            "job_url",
            "missed",
            "catch_up",
            "cancelled_job",
            "error",
            "workflow",
        ]

    def get_job_url(self, run) -> str | None:
        return f"/api/jobs/{run.job_id}/" if run.job_id else None


class ScheduleSerializer(serializers.ModelSerializer):
    team = serializers.CharField(source="team.slug")
    definition_name = serializers.CharField(source="definition.name", allow_null=True)
    kind = serializers.CharField()
    description = serializers.SerializerMethodField()

    class Meta:
        model = JobSchedule
        fields = [
            "id",
            "team",
            "name",
            "definition",
            "definition_name",
            "workflow_template",
            "kind",
            "cron",
            "timezone",
            "interval_seconds",
            "run_at",
            "start_at",
            "end_at",
            "enabled",
            "concurrency_policy",
            "misfire_policy",
            "description",
            "last_fire_at",
            "next_fire_at",
            "created_at",
            "updated_at",
        ]

    def get_description(self, schedule) -> str:
        return describe(schedule)


class ScheduleDetailSerializer(ScheduleSerializer):
    recent_runs = serializers.SerializerMethodField()

    class Meta(ScheduleSerializer.Meta):
        fields = [*ScheduleSerializer.Meta.fields, "recent_runs"]

    @extend_schema_field(ScheduleRunSerializer(many=True))
    def get_recent_runs(self, schedule) -> list:
        runs = schedule_run_list(schedule=schedule)[:RECENT_RUNS]
        return ScheduleRunSerializer(runs, many=True).data


class NextRunSerializer(serializers.Serializer):
    at = serializers.DateTimeField(help_text="In UTC.")
    local = serializers.DateTimeField(help_text="In the schedule's time zone.")


class NextRunsSerializer(serializers.Serializer):
    description = serializers.CharField()
    timezone = serializers.CharField()
    next_runs = NextRunSerializer(many=True)


class BackfillSerializer(StrictSerializer):
    start = serializers.DateTimeField(help_text="The first time to look from (included).")
    end = serializers.DateTimeField(help_text="The last time (included); not in the future.")
    dry_run = serializers.BooleanField(
        default=False, help_text="Only list the due times and which would run."
    )


class BackfillDueTimeSerializer(serializers.Serializer):
    due_at = serializers.DateTimeField()
    already_run = serializers.BooleanField(help_text="It has a run, so a backfill leaves it.")


class BackfillResultSerializer(serializers.Serializer):
    dry_run = serializers.BooleanField()
    due_times = BackfillDueTimeSerializer(many=True)
    submitted = serializers.IntegerField(help_text="Runs recorded now (0 for a dry run).")
    runs = ScheduleRunSerializer(many=True)


class ScheduleFilter(django_filters.FilterSet):
    team = django_filters.CharFilter(field_name="team__slug")
    enabled = django_filters.BooleanFilter()
    name = django_filters.CharFilter()


SCHEDULE_EXAMPLES = [
    OpenApiExample(
        "Weekdays at 02:30 in Berlin",
        value={
            "name": "nightly",
            "definition": 1,
            "cron": "30 2 * * 1-5",
            "timezone": "Europe/Berlin",
            "concurrency_policy": "forbid",
        },
        request_only=True,
    ),
    OpenApiExample(
        "Every ten minutes",
        request_only=True,
        value={"name": "poll", "definition": 1, "interval_seconds": 600},
    ),
    OpenApiExample(
        "Once",
        request_only=True,
        value={"name": "migrate", "definition": 1, "run_at": "2030-01-01T00:00:00Z"},
    ),
]
DETAIL = {200: ScheduleDetailSerializer}


@extend_schema_view(
    retrieve=extend_schema(responses=DETAIL),
    create=extend_schema(
        request=ScheduleWriteSerializer,
        responses={201: ScheduleDetailSerializer},
        examples=SCHEDULE_EXAMPLES,
    ),
    update=extend_schema(request=ScheduleWriteSerializer, responses=DETAIL),
    partial_update=extend_schema(request=ScheduleWriteSerializer, responses=DETAIL),
    destroy=extend_schema(responses={204: None}),
    pause=extend_schema(request=None, responses=DETAIL),
    resume=extend_schema(
        request=None,
        responses={**DETAIL, 400: refused("A one-off schedule that has already run.")},
    ),
    runs=extend_schema(responses=ScheduleRunSerializer(many=True), filters=False),
    backfill=extend_schema(
        request=BackfillSerializer,
        responses={
            200: BackfillResultSerializer,
            400: refused("A range in the future, or of more than SCHEDULE_BACKFILL_MAX due times."),
        },
        examples=[
            OpenApiExample(
                "A night's due times, listed first",
                request_only=True,
                value={
                    "start": "2030-01-01T00:00:00Z",
                    "end": "2030-01-01T06:00:00Z",
                    "dry_run": True,
                },
            )
        ],
    ),
    next_runs=extend_schema(
        parameters=[
            OpenApiParameter("count", int, description=f"1 to {MAX_PREVIEW}; default 5."),
            OpenApiParameter(
                "after", OpenApiTypes.DATETIME, description="With its UTC offset; default now."
            ),
        ],
        responses=NextRunsSerializer,
    ),
)
class ScheduleViewSet(
    ChangeableObjectMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    viewers_may_not_change = VIEWERS_MAY_NOT_SCHEDULE
    # A schedule's audit events are described from its URL and its answer (object type
    # "schedule", not "jobschedule"), as they always have been.
    audit_target = False
    serializer_class = ScheduleSerializer
    filterset_class = ScheduleFilter
    queryset = JobSchedule.objects.none()  # the schema's model; requests use get_queryset

    def get_queryset(self):
        return schedule_list_visible(user=self.request.user)

    def _detail(self, schedule, code=status.HTTP_200_OK):
        schedule = self.get_queryset().get(pk=schedule.pk)
        return Response(ScheduleDetailSerializer(schedule).data, status=code)

    def retrieve(self, request, pk=None):
        return self._detail(self.get_object())

    def create(self, request):
        serializer = ScheduleWriteSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        fields = dict(serializer.validated_data)
        team, definition = fields.pop("team"), fields.pop("definition", None)
        schedule = schedule_create(
            team=team, definition=definition, fields=fields, user=request.user
        )
        return self._detail(schedule, status.HTTP_201_CREATED)

    def update(self, request, pk=None, partial=False):
        schedule = self.get_changeable_object()
        serializer = ScheduleWriteSerializer(
            schedule, data=request.data, partial=True, context={"request": request}
        )
        serializer.is_valid(raise_exception=True)
        return self._detail(
            schedule_update(schedule=schedule, fields=dict(serializer.validated_data))
        )

    def partial_update(self, request, pk=None):
        return self.update(request, pk, partial=True)

    def destroy(self, request, pk=None):
        schedule_delete(schedule=self.get_changeable_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        return self._detail(schedule_pause(schedule=self.get_changeable_object()))

    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        schedule = self.get_changeable_object()
        if schedule.run_at is not None and schedule.last_fire_at is not None:
            raise JobStateError("This one-off schedule has already run.")
        return self._detail(schedule_resume(schedule=schedule))

    @action(detail=True, methods=["get"])
    def runs(self, request, pk=None):
        runs = schedule_run_list(schedule=self.get_object())
        page = self.paginate_queryset(runs)
        return self.get_paginated_response(ScheduleRunSerializer(page, many=True).data)

    @action(detail=True, methods=["get"], url_path="next_runs")
    def next_runs(self, request, pk=None):
        """The next `count` (default 5, at most 100) fire times after `after` (default
        now), in UTC and in the schedule's time zone, whether or not it is paused."""
        schedule = self.get_object()
        count = request.query_params.get("count", "5")
        if not count.isdecimal() or not 1 <= int(count) <= MAX_PREVIEW:
            raise ValidationError({"count": [f"A whole number from 1 to {MAX_PREVIEW}."]})
        after = timezone.now()
        if "after" in request.query_params:
            after = parse_datetime(request.query_params["after"])
            if after is None or timezone.is_naive(after):
                raise ValidationError({"after": ["An ISO 8601 time with its UTC offset."]})
        zone = ZoneInfo(schedule.timezone)
        times = Timetable(schedule).upcoming(after, int(count))
        return Response(
            {
                "description": describe(schedule),
                "timezone": schedule.timezone,
                "next_runs": [
                    {"at": at.astimezone(ZoneInfo("UTC")), "local": at.astimezone(zone)}
                    for at in times
                ],
            }
        )

    @action(detail=True, methods=["post"])
    def backfill(self, request, pk=None):
        """Run the due times from `start` to `end` (both included, none in the future)
        that have no run yet: one job each, recorded as `backfilled` runs; repeating it
        submits nothing more. At most SCHEDULE_BACKFILL_MAX due times at once.
        `dry_run` lists the due times and which already ran."""
        schedule = self.get_changeable_object()
        serializer = BackfillSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = schedule_backfill(schedule=schedule, **serializer.validated_data)
        return Response(
            {
                "dry_run": serializer.validated_data["dry_run"],
                "due_times": [
                    {"due_at": due, "already_run": due in result.already_run}
                    for due in result.due_times
                ],
                "submitted": len(result.runs),
                "runs": ScheduleRunSerializer(result.runs, many=True).data,
            }
        )
