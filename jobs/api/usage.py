"""`GET /api/usage/report/`: what the caller's teams' attempts used over a span of days
(see `jobs.usage_report`)."""

from datetime import date, timedelta

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import team_list_visible
from resources.models import Queue

from ..usage_report import FIGURES, GROUPS, UsageQuery, usage_report

DEFAULT_DAYS = 30
# Whole UTC days; at most ten years at once.
MOST_DAYS = 3660
FIRST_DAY, LAST_DAY = date(2000, 1, 1), date(9999, 1, 1)


class UsageReportQuerySerializer(serializers.Serializer):
    since = serializers.DateField(
        required=False,
        help_text=f"The first UTC day counted; default {DEFAULT_DAYS} days before `until`.",
    )
    until = serializers.DateField(
        required=False,
        help_text="The UTC day after the last one counted; default tomorrow (today counts).",
    )
    by = serializers.CharField(
        default="team",
        help_text=f"What to sum by, comma-separated, of {', '.join(GROUPS)}; default team.",
    )
    team = serializers.SlugField(required=False, help_text="Only this team (its slug).")
    queue = serializers.CharField(required=False, max_length=63, help_text="Only this queue.")
    user = serializers.CharField(
        required=False, max_length=150, help_text="Only the jobs this user submitted."
    )

    def validate_by(self, value):
        groups = [group.strip() for group in value.split(",") if group.strip()]
        unknown = [group for group in groups if group not in GROUPS]
        if unknown:
            raise serializers.ValidationError(
                f"Unknown: {', '.join(unknown)}. Choose from {', '.join(GROUPS)}."
            )
        if not groups:
            raise serializers.ValidationError(f"Choose from {', '.join(GROUPS)}.")
        if len(set(groups)) != len(groups):
            raise serializers.ValidationError("Name each at most once.")
        return tuple(groups)

    def validate_team(self, value):
        team = team_list_visible(user=self.context["user"]).filter(slug=value).first()
        if team is None:
            raise serializers.ValidationError("No team you can see has this slug.")
        return team.pk

    def validate_queue(self, value):
        queue = Queue.objects.filter(name=value).values_list("pk", flat=True).first()
        if queue is None:
            raise serializers.ValidationError(f'No queue "{value}".')
        return queue

    def validate(self, attrs):
        for name in ("since", "until"):
            if name in attrs and not FIRST_DAY <= attrs[name] <= LAST_DAY:
                raise serializers.ValidationError(
                    {name: f"Must be from {FIRST_DAY} to {LAST_DAY}."}
                )
        until = attrs.get("until") or timezone.now().date() + timedelta(days=1)
        since = attrs.get("since") or until - timedelta(days=DEFAULT_DAYS)
        if since >= until:
            raise serializers.ValidationError({"until": "Must be after `since`."})
        if (until - since).days > MOST_DAYS:
            raise serializers.ValidationError(
                {"since": f"At most {MOST_DAYS} days at once; this asks {(until - since).days}."}
            )
        return {**attrs, "since": since, "until": until}


class UsageFiguresSerializer(serializers.Serializer):
    attempts = serializers.IntegerField(help_text="Attempts that ended in the span.")
    succeeded = serializers.IntegerField(help_text="Of those, the ones that succeeded.")
    run_hours = serializers.FloatField(help_text="Hours attempts ran (each attempt's own).")
    cpu_hours = serializers.FloatField(help_text="CPU core-hours allocated while running.")
    memory_gb_hours = serializers.FloatField(help_text="Memory GiB-hours, likewise.")
    gpu_hours = serializers.FloatField(help_text="GPU-hours, likewise.")


class UsageRowSerializer(UsageFiguresSerializer):
    team = serializers.CharField(required=False, help_text="With `by` team: its slug.")
    queue = serializers.CharField(required=False, help_text="With `by` queue: its name.")
    user = serializers.CharField(
        required=False,
        allow_null=True,
        help_text="With `by` user: the submitter's username (null: none, or deleted).",
    )
    day = serializers.DateField(required=False, help_text="With `by` day: the UTC day.")


class UsageReportSerializer(serializers.Serializer):
    since = serializers.DateField()
    until = serializers.DateField()
    by = serializers.ListField(child=serializers.ChoiceField(choices=GROUPS))
    rows = UsageRowSerializer(many=True)
    total = UsageFiguresSerializer()


HOUR = 3600.0


def _figures(sums: dict) -> dict:
    """Seconds as the report writes them: hours, to the microhour (3.6 ms)."""
    return {
        "attempts": int(sums["attempts"] or 0),
        "succeeded": int(sums["succeeded"] or 0),
        "run_hours": round((sums["run_seconds"] or 0) / HOUR, 6),
        "cpu_hours": round((sums["cpu_seconds"] or 0) / HOUR, 6),
        "memory_gb_hours": round((sums["memory_mb_seconds"] or 0) / 1024 / HOUR, 6),
        "gpu_hours": round((sums["gpu_seconds"] or 0) / HOUR, 6),
    }


def usage_report_answer(*, user, query) -> dict:
    """The report the query parameters ask for, as the API answers it; a ValidationError
    (with field messages) for a bad query."""
    params = UsageReportQuerySerializer(data=query, context={"user": user})
    params.is_valid(raise_exception=True)
    options = params.validated_data
    usage = UsageQuery(
        since=options["since"],
        until=options["until"],
        by=options["by"],
        team=options.get("team"),
        queue=options.get("queue"),
        user=options.get("user"),
    )
    rows = usage_report(user=user, query=usage)
    total = {figure: sum(row[figure] or 0 for row in rows) for figure in FIGURES}
    return {
        "since": usage.since,
        "until": usage.until,
        "by": list(usage.by),
        "rows": [{**{group: row[group] for group in usage.by}, **_figures(row)} for row in rows],
        "total": _figures(total),
    }


class UsageReportView(APIView):
    """What your teams' jobs used, summed by team, queue, user and/or day (like Slurm's
    `sreport`): attempts that ended, and the hours of CPU, memory and GPUs their
    allocations held while they ran (running attempts count until now)."""

    @extend_schema(parameters=[UsageReportQuerySerializer], responses=UsageReportSerializer)
    def get(self, request):
        return Response(usage_report_answer(user=request.user, query=request.query_params))
