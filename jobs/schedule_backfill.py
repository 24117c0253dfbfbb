"""Backfill: a schedule's past due times in a range run now, one job for each that has
no run yet (idempotent per due time, as triggers are), at most SCHEDULE_BACKFILL_MAX."""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from .models import JobSchedule, JobScheduleRun, ScheduleRunOutcome
from .schedule_times import Timetable
from .schedules import schedule_runs_record, schedule_runs_submit


@dataclass(frozen=True)
class Backfill:
    due_times: list[datetime]  # every due time in the range
    already_run: set[datetime]  # those of them with a run already (left alone)
    runs: list[JobScheduleRun]  # the runs recorded now (none for a dry run)


logger = logging.getLogger(__name__)


def schedule_backfill(
    *, schedule: JobSchedule, start: datetime, end: datetime, dry_run: bool = False
) -> Backfill:
    """Submit a job for each due time from `start` to `end` (both included, neither in
    the future) that has no run, recorded as a `backfilled` run; the concurrency and
    misfire policies do not apply (a backfill is asked for). A dry run only tells."""
    now = timezone.now()
    if end > now:
        raise ValidationError({"end": ["Must not be in the future: only past due times run."]})
    if start > end:
        raise ValidationError({"start": ["Must not be after end."]})
    limit = settings.SCHEDULE_BACKFILL_MAX
    with transaction.atomic():
        schedule = (
            JobSchedule.objects.select_for_update(of=("self",))
            .select_related("definition__queue", "team", "created_by")
            .get(pk=schedule.pk)
        )
        due_times = []
        for due in Timetable(schedule).upcoming(start - timedelta(microseconds=1), limit + 1):
            if due > end:
                break
            due_times.append(due)
        if len(due_times) > limit:
            raise ValidationError(
                {
                    "end": [
                        f"The range holds more than SCHEDULE_BACKFILL_MAX ({limit}) due "
                        "times; backfill a shorter range, or several."
                    ]
                }
            )
        already_run = set(
            schedule.runs.filter(due_at__in=due_times).values_list("due_at", flat=True)
        )
        runs = [
            JobScheduleRun(schedule=schedule, due_at=due, fired_at=now)
            for due in due_times
            if due not in already_run
        ]
        if dry_run:
            return Backfill(due_times=due_times, already_run=already_run, runs=[])
        schedule_runs_submit(runs, outcome=ScheduleRunOutcome.BACKFILLED)
        schedule_runs_record(runs)
    logger.info(
        "schedule backfilled schedule=%s start=%s end=%s runs=%d already_run=%d",
        schedule.pk,
        start.isoformat(),
        end.isoformat(),
        len(runs),
        len(already_run),
    )
    return Backfill(due_times=due_times, already_run=already_run, runs=runs)
