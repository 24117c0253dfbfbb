"""Schedule pages: the list, a schedule's page (in words, its next runs, its last
outcomes and run history, pause and resume), and the form that creates or edits one,
with the next runs previewed as the cron is typed."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST
from rest_framework import exceptions as api_exceptions

from accounts.selectors import team_list_submittable

from ..api.schedules import ScheduleWriteSerializer
from ..models import ConcurrencyPolicy, JobSchedule, MisfirePolicy
from ..schedule_times import ScheduleTimeError, Timetable, cron_check, describe, timezone_check
from ..schedules import schedule_create, schedule_pause, schedule_resume, schedule_update
from ..selectors import definition_list_visible, schedule_list_visible, schedule_run_list
from ..services.actions import JobStateError
from .common import (
    PAGE_SIZE,
    act_and_tell,
    field_errors,
    require_may_change,
    submittable_team_ids,
)

NEXT_RUNS = 5
RUN_HISTORY = 50
FIELDS = (
    "name",
    "definition",
    "cron",
    "timezone",
    "interval_seconds",
    "concurrency_policy",
    "misfire_policy",
)


@login_required
def schedule_list(request):
    schedules = schedule_list_visible(user=request.user).order_by("name", "id")[: PAGE_SIZE * 10]
    return render(
        request,
        "jobs/schedule_list.html",
        {"schedules": schedules, "may_act": bool(submittable_team_ids(request.user))},
    )


def _next_runs(schedule: JobSchedule, count: int = NEXT_RUNS) -> list:
    return list(Timetable(schedule).upcoming(timezone.now(), count))


@login_required
def schedule_page(request, pk):
    schedule = get_object_or_404(schedule_list_visible(user=request.user), pk=pk)
    return render(
        request,
        "jobs/schedule_page.html",
        {
            "schedule": schedule,
            "description": describe(schedule),
            "next_runs": _next_runs(schedule),
            "runs": schedule_run_list(schedule=schedule)[:RUN_HISTORY],
            "may_act": schedule.team_id in submittable_team_ids(request.user),
        },
    )


@login_required
def schedule_form(request, pk=None):
    """Create (no `pk`) or edit a schedule of a definition."""
    user = request.user
    schedule = None
    if pk is not None:
        schedule = get_object_or_404(schedule_list_visible(user=user), pk=pk)
        require_may_change(user, schedule.team_id)
    teams = team_list_submittable(user=user)
    if not teams.exists():
        raise PermissionDenied("Viewers may not make schedules.")
    values = _values(schedule) if request.method != "POST" else _posted(request)
    errors = {}
    if request.method == "POST":
        try:
            schedule = _save(request, schedule, values)
        except (api_exceptions.ValidationError, DjangoValidationError) as exc:
            errors = field_errors(exc)
        except api_exceptions.PermissionDenied as exc:
            raise PermissionDenied(str(exc.detail)) from exc
        else:
            messages.success(request, f"Schedule {schedule.name} saved.")
            return redirect(reverse("schedule-page", args=[schedule.pk]))
    return render(
        request,
        "jobs/schedule_form.html",
        {
            "schedule": schedule,
            "values": values,
            "errors": errors,
            "preview": _preview(values["cron"], values["timezone"]) if values["cron"] else None,
            "definitions": definition_list_visible(user=user)
            .filter(team__in=teams)
            .order_by("name")[:500],
            "concurrency_policies": ConcurrencyPolicy.values,
            "misfire_policies": MisfirePolicy.values,
        },
        status=400 if errors else 200,
    )


def _values(schedule: JobSchedule | None) -> dict:
    if schedule is None:
        return {
            **dict.fromkeys(FIELDS, ""),
            "timezone": "UTC",
            "concurrency_policy": ConcurrencyPolicy.ALLOW,
            "misfire_policy": MisfirePolicy.RUN_ONCE,
        }
    return {
        "name": schedule.name,
        "definition": str(schedule.definition_id or ""),
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "interval_seconds": "" if schedule.interval_seconds is None else schedule.interval_seconds,
        "concurrency_policy": schedule.concurrency_policy,
        "misfire_policy": schedule.misfire_policy,
    }


def _posted(request) -> dict:
    return {name: request.POST.get(name, "").strip() for name in FIELDS}


def _save(request, schedule: JobSchedule | None, values: dict) -> JobSchedule:
    data = {
        "name": values["name"],
        "cron": values["cron"] or None,
        "timezone": values["timezone"] or "UTC",
        "interval_seconds": values["interval_seconds"] or None,
        "concurrency_policy": values["concurrency_policy"],
        "misfire_policy": values["misfire_policy"],
    }
    if schedule is None:
        data["definition"] = values["definition"] or None
    serializer = ScheduleWriteSerializer(
        schedule, data=data, partial=schedule is not None, context={"request": request}
    )
    serializer.is_valid(raise_exception=True)
    fields = dict(serializer.validated_data)
    if schedule is not None:
        return schedule_update(schedule=schedule, fields=fields)
    team, definition = fields.pop("team"), fields.pop("definition", None)
    return schedule_create(team=team, definition=definition, fields=fields, user=request.user)


def _preview(cron: str, zone: str) -> dict:
    """The cron in words and its next runs, or why it cannot run."""
    try:
        schedule = JobSchedule(cron=cron_check(cron), timezone=zone or "UTC")
        timezone_check(schedule.timezone)
    except ScheduleTimeError as exc:
        return {"error": str(exc)}
    return {
        "description": describe(schedule),
        "next_runs": _next_runs(schedule),
        "timezone": schedule.timezone,
    }


@login_required
def schedule_preview(request):
    """The form's preview, fetched as the cron is typed."""
    preview = _preview(request.GET.get("cron", ""), request.GET.get("timezone", "UTC"))
    return render(request, "jobs/_schedule_preview.html", {"preview": preview})


def _toggle(request, pk, change, done: str):
    schedule = get_object_or_404(schedule_list_visible(user=request.user), pk=pk)
    require_may_change(request.user, schedule.team_id)
    act_and_tell(request, lambda: change(schedule), done)
    return redirect(reverse("schedule-page", args=[schedule.pk]))


@login_required
@require_POST
def schedule_pause_view(request, pk):
    return _toggle(request, pk, lambda s: schedule_pause(schedule=s), "Paused.")


def _resume(schedule):
    if schedule.run_at is not None and schedule.last_fire_at is not None:
        raise JobStateError("This one-off schedule has already run.")
    return schedule_resume(schedule=schedule)


@login_required
@require_POST
def schedule_resume_view(request, pk):
    return _toggle(request, pk, _resume, "Resumed.")
