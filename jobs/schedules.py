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
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    PeriodicTasks,
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
    WorkflowTemplate,
)
from .schedule_times import ScheduleTimeError, Timetable, cron_check, timezone_check
from .services.actions import JobStateError, job_cancel
from .services.definitions import definition_job_spec
from .services.submission import job_submit, jobs_submit_many
from .services.timeline import schedule_runs_events
from .services.workflows import workflow_template_submit

logger = logging.getLogger(__name__)

FIRE_TASK = "jobs.fire_schedule"
# What jobs.beat sends: the ids of the schedules due at one moment, many to a message.
FIRE_BATCH_TASK = "jobs.fire_schedules"
SCHEDULE_FIELDS = (
    "name",
    "definition",
    "workflow_template",
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


def schedule_validate(schedule: JobSchedule, *, check_name: bool = True) -> None:
    """Field-level errors for a schedule that cannot run as given (a ValidationError).
    `check_name=False` leaves the team's names to the caller (a bulk create checks them
    in one query)."""
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
    if (schedule.definition_id is None) == (schedule.workflow_template_id is None):
        errors["definition"] = ["Give exactly one of definition and workflow_template."]
    elif (
        schedule.workflow_template_id is not None
        and schedule.team_id is not None
        and schedule.workflow_template.team_id != schedule.team_id
    ):
        errors["workflow_template"] = ["No workflow template with this id in the team."]
    if check_name and schedule.name and schedule.team_id is not None:
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


def _crontab_fields(schedule: JobSchedule) -> dict:
    minute, hour, day_of_month, month_of_year, day_of_week = schedule.cron.split()
    return {
        "minute": minute,
        "hour": hour,
        "day_of_month": day_of_month,
        "month_of_year": month_of_year,
        "day_of_week": day_of_week,
        "timezone": schedule.timezone,
    }


def _crontab_key(crontab: CrontabSchedule) -> tuple:
    return (
        crontab.minute,
        crontab.hour,
        crontab.day_of_month,
        crontab.month_of_year,
        crontab.day_of_week,
        str(crontab.timezone),
    )


def _crontabs_known(schedules: list[JobSchedule]) -> dict[tuple, CrontabSchedule]:
    """The crontab rows the cron schedules need, by their fields: those there are read
    in one query, the missing ones written in one more."""
    wanted = {tuple(f.values()): f for f in (_crontab_fields(s) for s in schedules if s.cron)}
    if not wanted:
        return {}
    known: dict[tuple, CrontabSchedule] = {}
    for crontab in CrontabSchedule.objects.filter(
        minute__in={key[0] for key in wanted}, hour__in={key[1] for key in wanted}
    ):
        known.setdefault(_crontab_key(crontab), crontab)
    missing = [CrontabSchedule(**fields) for key, fields in wanted.items() if key not in known]
    for crontab in CrontabSchedule.objects.bulk_create(missing):
        known[_crontab_key(crontab)] = crontab
    return known


def _beat_schedule(schedule: JobSchedule, crontabs: dict | None = None) -> dict:
    """The entry's schedule fields; `crontabs` holds crontab rows already looked up."""
    if schedule.cron:
        fields = _crontab_fields(schedule)
        crontab = (crontabs or {}).get(tuple(fields.values()))
        if crontab is None:
            crontab = CrontabSchedule.objects.filter(**fields).first()
            crontab = crontab or CrontabSchedule.objects.create(**fields)
        return {"crontab": crontab}
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


def _beat_entry(
    schedule: JobSchedule, *, now: datetime, crontabs: dict | None = None
) -> PeriodicTask:
    """The schedule's beat entry, unsaved: its kind, time zone, and whether it runs."""
    last_run_at = now
    if schedule.interval_seconds is not None and schedule.next_fire_at is not None:
        last_run_at = schedule.next_fire_at - timedelta(seconds=schedule.interval_seconds)
    return PeriodicTask(
        name=periodic_task_name(schedule.pk),
        task=FIRE_TASK,
        kwargs=json.dumps({"schedule_id": schedule.pk}),
        enabled=schedule.enabled and schedule.next_fire_at is not None,
        last_run_at=last_run_at,
        expires=schedule.end_at,
        description=f"Fires job schedule {schedule}",
        **_beat_schedule(schedule, crontabs),
    )


def _beat_entry_replace(schedule: JobSchedule, *, now: datetime) -> None:
    """Write the schedule's beat entry afresh."""
    _beat_entry_remove(schedule)
    schedule.periodic_task = _beat_entry(schedule, now=now)
    schedule.periodic_task.save()


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
    *, team: Team, definition: JobDefinition | None, fields: dict, user: User | None = None
) -> JobSchedule:
    schedule = JobSchedule(team=team, definition=definition, created_by=user)
    for name, value in fields.items():
        setattr(schedule, name, value)
    with transaction.atomic():
        # The definition's row lock: a delete of it in flight finishes first (and this is a
        # 400), or waits until this schedule exists (and refuses to delete it).
        if definition is not None:
            if not JobDefinition.objects.select_for_update().filter(pk=definition.pk).exists():
                raise ValidationError({"definition": ["This definition was just deleted."]})
        elif schedule.workflow_template_id is not None:
            templates = WorkflowTemplate.objects.select_for_update()
            if not templates.filter(pk=schedule.workflow_template_id).exists():
                raise ValidationError({"workflow_template": ["This template was just deleted."]})
        schedule = _save(schedule, now=timezone.now(), realign=True)
    logger.info("schedule created schedule=%s team=%s", schedule.pk, team.slug)
    return schedule


def schedules_create_many(
    *, team: Team, definition: JobDefinition, fields_list: list[dict], user: User | None = None
) -> list[JobSchedule]:
    """Many schedules of one definition at once (a team moving its crontab in), each
    checked as schedule_create checks one, written with a few statements in all rather
    than a few per schedule. A ValidationError names the first bad one by its index."""
    now = timezone.now()
    schedules = []
    for index, fields in enumerate(fields_list):
        schedule = JobSchedule(team=team, definition=definition, created_by=user, **fields)
        try:
            schedule_validate(schedule, check_name=False)
            _plan(schedule, now=now, realign=True)
            if schedule.run_at and schedule.next_fire_at is None:
                raise ValidationError({"run_at": ["Must be in the future."]})
        except ValidationError as exc:
            raise ValidationError({f"{index}.{k}": v for k, v in exc.message_dict.items()}) from exc
        schedules.append(schedule)
    names = [schedule.name for schedule in schedules]
    taken = set(
        JobSchedule.objects.filter(team=team, name__in=names).values_list("name", flat=True)
    )
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in taken or name in seen:
            raise ValidationError(
                {f"{index}.name": ["The team already has a schedule with this name."]}
            )
        seen.add(name)
    with transaction.atomic():
        if not JobDefinition.objects.select_for_update().filter(pk=definition.pk).exists():
            raise ValidationError({"definition": ["This definition was just deleted."]})
        JobSchedule.objects.bulk_create(schedules)
        crontabs = _crontabs_known(schedules)
        entries = [_beat_entry(schedule, now=now, crontabs=crontabs) for schedule in schedules]
        for entry in entries:
            # What PeriodicTask.save() would do, which bulk_create skips.
            entry.last_run_at = entry.last_run_at if entry.enabled else None
        PeriodicTask.objects.bulk_create(entries)
        for schedule, entry in zip(schedules, entries, strict=True):
            schedule.periodic_task = entry
        JobSchedule.objects.bulk_update(schedules, ["periodic_task"])
        PeriodicTasks.update_changed()
    logger.info("schedules created count=%d team=%s", len(schedules), team.slug)
    return schedules


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
        Job.objects.filter(
            Q(schedule_runs__schedule=schedule) | Q(workflow__schedule_runs__schedule=schedule)
        )
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
            .select_related("definition__queue", "team", "workflow_template__team")
            .filter(pk=schedule_id)
            .first()
        )
        if schedule is None:
            schedule_orphan_entry_remove(schedule_id=schedule_id)
            return None
        timetable = Timetable(schedule)
        due = _due(schedule, timetable, now)
        if due is None:
            return None
        if schedule.runs.filter(due_at=due).exists():
            # A backfill (or an earlier fire) recorded it: move on to the next due time,
            # so beat stops sending this one.
            _advance(schedule, timetable, due, now=now)
            schedule.save(update_fields=["last_fire_at", "next_fire_at", "updated_at"])
            return None
        run, late = _new_run(schedule, timetable, due, now=now)
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
        schedule_runs_record([run])
        _advance(schedule, timetable, due, now=now)
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
    _log_fired(run, now=now)
    return run


def _due(schedule: JobSchedule, timetable: Timetable, now: datetime) -> datetime | None:
    """The due time to fire now: the last one at or before now, if not fired yet."""
    if not schedule.enabled or schedule.next_fire_at is None:
        return None
    due = timetable.latest_until(now)
    if due is None or due < schedule.next_fire_at:
        return None
    return due


def _new_run(
    schedule: JobSchedule, timetable: Timetable, due: datetime, *, now: datetime
) -> tuple[JobScheduleRun, bool]:
    """The run for `due`, with the due times it folds in, and whether it is late (a
    misfire)."""
    run = JobScheduleRun(schedule=schedule, due_at=due, fired_at=now)
    run.missed = timetable.count_between(schedule.next_fire_at, due)
    late = (now - due).total_seconds() > settings.SCHEDULE_MISFIRE_GRACE_SECONDS
    run.catch_up = schedule.misfire_policy == MisfirePolicy.RUN_ONCE and (late or run.missed > 0)
    return run, late


def _advance(schedule: JobSchedule, timetable: Timetable, due: datetime, *, now: datetime) -> None:
    schedule.last_fire_at = due
    schedule.next_fire_at = timetable.next_after(due)
    schedule.updated_at = now


def _log_fired(run: JobScheduleRun, *, now: datetime) -> None:
    logger.info(
        "schedule fired schedule=%s due_at=%s outcome=%s job=%s missed=%s late_ms=%d",
        run.schedule_id,
        run.due_at.isoformat(),
        run.outcome,
        run.job_id,
        run.missed,
        (now - run.due_at).total_seconds() * 1000,
    )


def schedule_runs_record(runs: list[JobScheduleRun]) -> list[JobScheduleRun]:
    """Write what schedules did at their due times. The one place JobScheduleRun rows
    are written (fires, batched fires and backfills), so whatever follows a run has a
    single home, as their events have; called inside the transaction that holds the
    schedules' row locks."""
    runs = JobScheduleRun.objects.bulk_create(runs)
    schedule_runs_events(runs)
    return runs


def schedules_due(*, until: datetime) -> list[tuple[int, datetime, int | None]]:
    """(id, next due time, interval_seconds) of the enabled schedules due at or before
    `until`, soonest first and, among those due together, the shortest intervals first
    (they are due again soonest): one read of the index on next_fire_at, however many
    schedules exist."""
    return list(
        JobSchedule.objects.filter(enabled=True, next_fire_at__lte=until)
        .order_by("next_fire_at", F("interval_seconds").asc(nulls_last=True), "id")
        .values_list("id", "next_fire_at", "interval_seconds")
    )


def schedules_fire(*, schedule_ids: list[int], now: datetime | None = None) -> int:
    """Fire the schedules due at one moment together, as schedule_fire fires each, with
    a few statements for the lot rather than a dozen per schedule: their rows locked in
    one, their jobs inserted in one per definition, their runs in one. Those with a
    concurrency policy (which looks at each one's active jobs), those gone, and all of
    them if the batch fails, are fired one by one. Unlike schedule_fire, a due time
    passed by less than SCHEDULE_MISFIRE_GRACE_SECONDS (a busy control worker, not a
    misfire) gets a run of its own rather than being folded into a later one. Returns
    how many runs were recorded."""
    now = now or timezone.now()
    try:
        with transaction.atomic():
            runs, rest = _fire_together(schedule_ids, now=now)
    except Exception:
        logger.exception("schedules could not fire together; one by one instead")
        runs, rest = [], schedule_ids
    for run in runs:
        _log_fired(run, now=now)
    fired = len(runs)
    for schedule_id in rest:
        try:
            fired += schedule_fire(schedule_id=schedule_id, now=now) is not None
        except Exception:
            logger.exception("schedule fire failed schedule=%s", schedule_id)
    return fired


def _fire_together(schedule_ids: list[int], *, now: datetime) -> tuple[list, list[int]]:
    schedules = list(
        JobSchedule.objects.select_for_update(of=("self",))
        .select_related("definition__queue", "team", "created_by")
        # Those that submit a definition's job; any other kind is fired one by one.
        .filter(
            pk__in=schedule_ids,
            concurrency_policy=ConcurrencyPolicy.ALLOW,
            definition__isnull=False,
        )
        .order_by("pk")
    )
    rest = sorted(set(schedule_ids) - {schedule.pk for schedule in schedules})
    due = {}
    grace = timedelta(seconds=settings.SCHEDULE_MISFIRE_GRACE_SECONDS)
    for schedule in schedules:
        timetable = Timetable(schedule)
        expected = schedule.next_fire_at
        if schedule.enabled and expected is not None and expected <= now <= expected + grace:
            # Not a misfire: each due time gets its own run, however busy the control
            # worker was (beat sends the next one as soon as this one has run).
            due_at = expected
        else:
            due_at = _due(schedule, timetable, now)
        if due_at is not None:
            due[schedule.pk] = (schedule, timetable, due_at)
    done = set(
        JobScheduleRun.objects.filter(
            schedule_id__in=due, due_at__in={due_at for _, _, due_at in due.values()}
        ).values_list("schedule_id", "due_at")
    )
    runs = []
    for schedule, timetable, due_at in due.values():
        if (schedule.pk, due_at) not in done:
            run, late = _new_run(schedule, timetable, due_at, now=now)
            if late and schedule.misfire_policy == MisfirePolicy.SKIP:
                run.outcome = ScheduleRunOutcome.SKIPPED_MISFIRE
            runs.append(run)
        _advance(schedule, timetable, due_at, now=now)
    schedule_runs_submit(
        [run for run in runs if not run.outcome], outcome=ScheduleRunOutcome.SUBMITTED
    )
    schedule_runs_record(runs)
    with connection.cursor() as cursor:
        # One statement per row, pipelined: far less work than bulk_update's CASE WHENs.
        cursor.executemany(
            "UPDATE jobs_jobschedule SET last_fire_at = %s, next_fire_at = %s, updated_at = %s"
            " WHERE id = %s",
            [
                (schedule.last_fire_at, schedule.next_fire_at, now, schedule.pk)
                for schedule, _, _ in due.values()
            ],
        )
    return runs, rest


def schedule_runs_submit(runs: list[JobScheduleRun], *, outcome: str) -> None:
    """Submit the runs' jobs (one insert for the runs of each definition; a workflow for
    each run of a workflow template's schedule), setting each run's job (or workflow)
    and `outcome`, or `submit_failed` and why. Inside the transaction that
    holds the schedules' row locks."""
    groups: dict[tuple, list[JobScheduleRun]] = {}
    for run in runs:
        schedule = run.schedule
        if schedule.workflow_template_id is not None:
            _submit(schedule, run)  # one workflow per due time
            if run.outcome == ScheduleRunOutcome.SUBMITTED:
                run.outcome = outcome
            continue
        groups.setdefault(
            (schedule.team_id, schedule.definition_id, schedule.created_by_id), []
        ).append(run)
    for group in groups.values():
        schedule = group[0].schedule
        keys = {
            schedule_idempotency_key(schedule_id=run.schedule_id, due_at=run.due_at): run
            for run in group
        }
        try:
            with transaction.atomic():
                jobs = jobs_submit_many(
                    team=schedule.team,
                    spec=definition_job_spec(definition=schedule.definition),
                    idempotency_keys=list(keys),
                    user=schedule.created_by,
                )
        except ValidationError as exc:
            for run in group:
                run.outcome = ScheduleRunOutcome.SUBMIT_FAILED
                run.error = "; ".join(exc.messages)[:2000]
            continue
        for key, run in keys.items():
            run.outcome = outcome
            run.job = jobs[key]


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
    if schedule.workflow_template_id is not None:
        # One run per due time (its unique key) keeps this to one workflow per due time.
        try:
            with transaction.atomic():
                run.workflow = workflow_template_submit(
                    template=schedule.workflow_template, user=schedule.created_by
                )
        except ValidationError as exc:
            run.outcome = ScheduleRunOutcome.SUBMIT_FAILED
            run.error = "; ".join(exc.messages)[:2000]
            return
        run.outcome = ScheduleRunOutcome.SUBMITTED
        return
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
