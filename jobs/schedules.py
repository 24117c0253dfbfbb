"""Writes for schedules: create, change, pause, resume, delete, and fire.

Every change rewrites the schedule's one django-celery-beat PeriodicTask in the same
transaction, so beat never keeps a stale entry. Beat's message only says "look at
schedule N": the trigger works out the due time itself, under the schedule's row lock,
and records one run per due time (a unique key), so two beats, a redelivered message or
a retried trigger never submit a second job for the same due time.

An interval entry is written with `last_run_at` one interval before the next due time:
DatabaseScheduler counts an interval from the last run, so this lines beat up with the
due times. The entry is replaced rather than updated because beat writes back the
`last_run_at` it keeps in memory before it reloads a changed row.
"""

import json
import logging
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
)

from accounts.models import Team, User

from .models import (
    TERMINAL_JOB_STATUSES,
    ConcurrencyPolicy,
    Job,
    JobDefinition,
    JobSchedule,
    JobScheduleRun,
    MisfirePolicy,
    ScheduleRunOutcome,
)
from .schedule_times import ScheduleTimeError, Timetable, cron_check, timezone_check
from .services.actions import JobStateError, job_cancel
from .services.definitions import definition_job_spec
from .services.submission import job_submit
from .services.timeline import schedule_run_event

logger = logging.getLogger(__name__)

FIRE_TASK = "jobs.fire_schedule"
SCHEDULE_FIELDS = (
    "name",
    "definition",
    "cron",
    "timezone",
    "interval_seconds",
    "run_at",
    "start_at",
    "end_at",
    "enabled",
    "concurrency_policy",
    "misfire_policy",
)
TIMING_FIELDS = ("cron", "timezone", "interval_seconds", "run_at", "start_at", "end_at")


def periodic_task_name(schedule_id: int) -> str:
    return f"jobs.schedule.{schedule_id}"


def schedule_validate(schedule: JobSchedule) -> None:
    """Field-level errors for a schedule that cannot run as given (a ValidationError)."""
    errors: dict[str, list[str]] = {}
    kinds = [
        name
        for name, given in (
            ("cron", bool(schedule.cron)),
            ("interval_seconds", schedule.interval_seconds is not None),
            ("run_at", schedule.run_at is not None),
        )
        if given
    ]
    if len(kinds) != 1:
        message = "Give exactly one of cron, interval_seconds or run_at."
        for name in kinds or ["cron", "interval_seconds", "run_at"]:
            errors[name] = [message]
    if schedule.cron:
        try:
            schedule.cron = cron_check(schedule.cron)
        except ScheduleTimeError as exc:
            errors["cron"] = [str(exc)]
    try:
        timezone_check(schedule.timezone)
    except ScheduleTimeError as exc:
        errors["timezone"] = [str(exc)]
    if schedule.interval_seconds is not None and schedule.interval_seconds < 1:
        errors["interval_seconds"] = ["At least one second."]
    if schedule.run_at is not None and (schedule.start_at or schedule.end_at):
        errors["run_at"] = ["A one-off schedule has no start_at or end_at."]
    if schedule.start_at and schedule.end_at and schedule.end_at <= schedule.start_at:
        errors["end_at"] = ["Must be after start_at."]
    if (
        schedule.definition_id is not None
        and schedule.team_id is not None
        and schedule.definition.team_id != schedule.team_id
    ):
        errors["definition"] = ["No definition with this id in the schedule's team."]
    if schedule.name and schedule.team_id is not None:
        taken = JobSchedule.objects.filter(team_id=schedule.team_id, name=schedule.name)
        if schedule.pk is not None:
            taken = taken.exclude(pk=schedule.pk)
        if taken.exists():
            errors["name"] = ["The team already has a schedule with this name."]
    if errors:
        raise ValidationError(errors)


def _plan(schedule: JobSchedule, *, now: datetime, realign: bool) -> None:
    """Set where interval due times start (when the timing changed) and the next due time."""
    if realign and schedule.interval_seconds is not None:
        schedule.anchor_at = schedule.start_at or now + timedelta(seconds=schedule.interval_seconds)
    if schedule.interval_seconds is None:
        schedule.anchor_at = None
    after = max(now, schedule.last_fire_at) if schedule.last_fire_at else now
    schedule.next_fire_at = Timetable(schedule).next_after(after)


def _beat_schedule(schedule: JobSchedule) -> dict:
    if schedule.cron:
        minute, hour, day_of_month, month_of_year, day_of_week = schedule.cron.split()
        fields = {
            "minute": minute,
            "hour": hour,
            "day_of_month": day_of_month,
            "month_of_year": month_of_year,
            "day_of_week": day_of_week,
            "timezone": schedule.timezone,
        }
        crontab = CrontabSchedule.objects.filter(**fields).first()
        return {"crontab": crontab or CrontabSchedule.objects.create(**fields)}
    if schedule.interval_seconds is not None:
        interval, _ = IntervalSchedule.objects.get_or_create(
            every=schedule.interval_seconds, period=IntervalSchedule.SECONDS
        )
        return {"interval": interval}
    clocked = ClockedSchedule.objects.create(clocked_time=schedule.run_at)
    return {"clocked": clocked, "one_off": True}


def _beat_entry_remove(schedule: JobSchedule) -> None:
    task = schedule.periodic_task
    if task is None:
        return
    clocked = task.clocked
    schedule.periodic_task = None
    task.delete()
    if clocked is not None:
        clocked.delete()


def _beat_entry_replace(schedule: JobSchedule, *, now: datetime) -> None:
    """Write the schedule's beat entry afresh: its kind, time zone, and whether it runs."""
    _beat_entry_remove(schedule)
    last_run_at = now
    if schedule.interval_seconds is not None and schedule.next_fire_at is not None:
        last_run_at = schedule.next_fire_at - timedelta(seconds=schedule.interval_seconds)
    schedule.periodic_task = PeriodicTask.objects.create(
        name=periodic_task_name(schedule.pk),
        task=FIRE_TASK,
        kwargs=json.dumps({"schedule_id": schedule.pk}),
        enabled=schedule.enabled and schedule.next_fire_at is not None,
        last_run_at=last_run_at,
        expires=schedule.end_at,
        description=f"Fires job schedule {schedule}",
        **_beat_schedule(schedule),
    )


def _save(schedule: JobSchedule, *, now: datetime, realign: bool) -> JobSchedule:
    schedule_validate(schedule)
    with transaction.atomic():
        _plan(schedule, now=now, realign=realign)
        if schedule.run_at and schedule.last_fire_at is None and schedule.next_fire_at is None:
            raise ValidationError({"run_at": ["Must be in the future."]})
        schedule.save()
        _beat_entry_replace(schedule, now=now)
        schedule.save(update_fields=["periodic_task"])
    return schedule


def schedule_create(
    *, team: Team, definition: JobDefinition, fields: dict, user: User | None = None
) -> JobSchedule:
    schedule = JobSchedule(team=team, definition=definition, created_by=user)
    for name, value in fields.items():
        setattr(schedule, name, value)
    with transaction.atomic():
        # The definition's row lock: a delete of it in flight finishes first (and this is a
        # 400), or waits until this schedule exists (and refuses to delete it).
        if not JobDefinition.objects.select_for_update().filter(pk=definition.pk).exists():
            raise ValidationError({"definition": ["This definition was just deleted."]})
        schedule = _save(schedule, now=timezone.now(), realign=True)
    logger.info("schedule created schedule=%s team=%s", schedule.pk, team.slug)
    return schedule


def schedule_update(*, schedule: JobSchedule, fields: dict) -> JobSchedule:
    """Change a schedule; a new timing starts its due times afresh from now."""
    with transaction.atomic():
        schedule = JobSchedule.objects.select_for_update().get(pk=schedule.pk)
        before = {name: getattr(schedule, name) for name in TIMING_FIELDS}
        for name, value in fields.items():
            setattr(schedule, name, value)
        realign = any(getattr(schedule, name) != value for name, value in before.items())
        return _save(schedule, now=timezone.now(), realign=realign)


def schedule_pause(*, schedule: JobSchedule) -> JobSchedule:
    """Stop new runs at once: the trigger checks `enabled`, and beat drops the entry."""
    return schedule_update(schedule=schedule, fields={"enabled": False})


def schedule_resume(*, schedule: JobSchedule) -> JobSchedule:
    """Run again from the next due time; due times that passed while paused are not
    caught up (the next expected due time moves past them)."""
    return schedule_update(schedule=schedule, fields={"enabled": True})


def schedule_delete(*, schedule: JobSchedule) -> None:
    with transaction.atomic():
        schedule = JobSchedule.objects.select_for_update().get(pk=schedule.pk)
        _beat_entry_remove(schedule)
        schedule.delete()


def schedule_orphan_entry_remove(*, schedule_id: int) -> None:
    """A beat entry whose schedule is gone (its team was deleted) is removed."""
    PeriodicTask.objects.filter(name=periodic_task_name(schedule_id)).delete()


def schedule_idempotency_key(*, schedule_id: int, due_at: datetime) -> str:
    return f"schedule-{schedule_id}-{due_at.astimezone(UTC).isoformat()}"


def _active_jobs(schedule: JobSchedule) -> list[Job]:
    return list(
        Job.objects.filter(schedule_runs__schedule=schedule)
        .exclude(status__in=TERMINAL_JOB_STATUSES)
        .order_by("id")
    )


def schedule_fire(*, schedule_id: int, now: datetime | None = None) -> JobScheduleRun | None:
    """Do what is due for a schedule now; None when nothing is (an early or duplicate
    message, a paused or finished schedule).

    The due time is the last one at or before now. Due times between the one expected
    and that one passed with no fire (beat was down): `run_once` folds them into one
    catch-up run, `skip` drops them, and a due time seen later than
    SCHEDULE_MISFIRE_GRACE_SECONDS is dropped too. Then the concurrency policy: `forbid`
    skips while an earlier run's job is active, `replace` cancels it.
    """
    now = now or timezone.now()
    with transaction.atomic():
        schedule = (
            JobSchedule.objects.select_for_update(of=("self",))
            .select_related("definition__queue", "team")
            .filter(pk=schedule_id)
            .first()
        )
        if schedule is None:
            schedule_orphan_entry_remove(schedule_id=schedule_id)
            return None
        if not schedule.enabled or schedule.next_fire_at is None:
            return None
        timetable = Timetable(schedule)
        due = timetable.latest_until(now)
        if due is None or due < schedule.next_fire_at:
            return None
        if schedule.runs.filter(due_at=due).exists():
            return None
        run = JobScheduleRun(schedule=schedule, due_at=due, fired_at=now)
        run.missed = timetable.count_between(schedule.next_fire_at, due)
        late = (now - due).total_seconds() > settings.SCHEDULE_MISFIRE_GRACE_SECONDS
        run.catch_up = schedule.misfire_policy == MisfirePolicy.RUN_ONCE and (
            late or run.missed > 0
        )
        active = (
            _active_jobs(schedule) if schedule.concurrency_policy != ConcurrencyPolicy.ALLOW else []
        )
        if late and schedule.misfire_policy == MisfirePolicy.SKIP:
            run.outcome = ScheduleRunOutcome.SKIPPED_MISFIRE
        elif active and schedule.concurrency_policy == ConcurrencyPolicy.FORBID:
            run.outcome = ScheduleRunOutcome.SKIPPED_RUNNING
        else:
            if active and schedule.concurrency_policy == ConcurrencyPolicy.REPLACE:
                run.cancelled_job = _cancel_active(active)
            _submit(schedule, run)
        run.save()
        schedule_run_event(run)
        schedule.last_fire_at = due
        schedule.next_fire_at = timetable.next_after(due)
        fields = ["last_fire_at", "next_fire_at", "updated_at"]
        if _beat_out_of_step(
            schedule,
            late_seconds=(now - due).total_seconds(),
            now=now,
            beat_was_down=late or run.missed > 0,
        ):
            _beat_entry_replace(schedule, now=now)
            fields.append("periodic_task")
        schedule.save(update_fields=fields)
    logger.info(
        "schedule fired schedule=%s due_at=%s outcome=%s job=%s missed=%s late_ms=%d",
        schedule.pk,
        due.isoformat(),
        run.outcome,
        run.job_id,
        run.missed,
        (now - due).total_seconds() * 1000,
    )
    return run


def _beat_out_of_step(
    schedule: JobSchedule, *, late_seconds: float, now: datetime, beat_was_down: bool
) -> bool:
    """Whether beat's interval entry fires well after the due times: after beat was
    restarted (it counts from when it fired last, not from the due time), or after its
    small lateness per fire has added up. Replacing the entry lines it up again: at once
    when due times were missed (beat was down), otherwise at most once in a few
    intervals, in case the lateness is a busy control worker's instead."""
    if schedule.interval_seconds is None or schedule.next_fire_at is None:
        return False
    if beat_was_down:
        return True
    limit = min(settings.SCHEDULE_REALIGN_AFTER_SECONDS, schedule.interval_seconds / 4)
    if late_seconds <= limit:
        return False
    written = schedule.periodic_task.date_changed if schedule.periodic_task else None
    settle = timedelta(seconds=max(5, 3 * schedule.interval_seconds))
    return written is None or written < now - settle


def _cancel_active(active: list[Job]) -> Job | None:
    cancelled = None
    for job in active:
        try:
            cancelled = job_cancel(job=job)
        except JobStateError:
            continue  # it ended meanwhile
    return cancelled


def _submit(schedule: JobSchedule, run: JobScheduleRun) -> None:
    key = schedule_idempotency_key(schedule_id=schedule.pk, due_at=run.due_at)
    try:
        with transaction.atomic():
            submission = job_submit(
                team=schedule.team,
                spec={
                    **definition_job_spec(definition=schedule.definition),
                    "idempotency_key": key,
                },
                user=schedule.created_by,
            )
    except ValidationError as exc:
        run.outcome = ScheduleRunOutcome.SUBMIT_FAILED
        run.error = "; ".join(exc.messages)[:2000]
        return
    run.outcome = ScheduleRunOutcome.SUBMITTED
    run.job = submission.job
