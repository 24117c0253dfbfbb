"""Ended executions, schedule runs and retries folded into the metrics' tallies: a fold
changes no figure, counts each row once however folds, scrapes and finishes interleave,
and the scheduler's leader runs it at its interval."""

import threading
from datetime import date, timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import User
from jobs.metrics.figures import execution_figures, schedule_run_figures
from jobs.models import (
    ExecutionStatus,
    ExecutionTally,
    Job,
    JobDefinition,
    JobExecution,
    JobRetry,
    JobSchedule,
    JobScheduleRun,
    RetryTally,
    ScheduleRunTally,
    UsageTally,
)
from jobs.scheduling.leader import Scheduler
from jobs.services.metrics_tallies import ENDED_EXECUTION_STATUSES, metrics_tallies_fold
from jobs.usage_report import UsageQuery, usage_report
from nodes.models import Node
from tests.jobs.making import make_jobs
from tests.jobs.metrics_world import EXPECTED, assert_counters_kept, build_world, scrape

AGE = "scheduler_oldest_pending_job_age_seconds"
# Every attempt there is, by team.
USAGE = UsageQuery(since=date(2000, 1, 1), until=date(9999, 1, 1), by=("team",))
FOLDED = (JobExecution, JobScheduleRun, JobRetry)
TALLIES = (ExecutionTally, ScheduleRunTally, RetryTally)


class Recounted(Exception):
    pass


def recount() -> dict:
    """The figures as they were before any fold: every row read again."""
    figures = {}
    try:
        with transaction.atomic():
            for model in FOLDED:
                model.objects.update(metrics_folded=False)
            for model in TALLIES:
                model.objects.all().delete()
            figures = scrape()
            raise Recounted
    except Recounted:
        return figures


def without_ages(values: dict) -> dict:
    return {key: value for key, value in values.items() if key[0] != AGE}


@pytest.mark.django_db
def test_a_fold_takes_what_never_changes_again_and_changes_no_figure(team, default_queue):
    build_world(team, default_queue)
    before = scrape()
    ended = JobExecution.objects.filter(status__in=ENDED_EXECUTION_STATUSES)
    assert ended.exists() and JobScheduleRun.objects.exists() and JobRetry.objects.exists()

    assert metrics_tallies_fold() == {
        "executions": ended.count(),
        "schedule_runs": JobScheduleRun.objects.count(),
        "retries": JobRetry.objects.count(),
    }
    assert set(JobExecution.objects.filter(metrics_folded=True)) == set(ended)
    assert not JobScheduleRun.objects.filter(metrics_folded=False).exists()
    assert not JobRetry.objects.filter(metrics_folded=False).exists()
    after = scrape()
    assert without_ages(after) == without_ages(before)
    assert {key: after[key] for key in EXPECTED} == pytest.approx(EXPECTED, abs=1e-6)
    # Nothing is left to fold, and folding again counts nothing twice.
    assert set(metrics_tallies_fold().values()) == {0}
    assert without_ages(scrape()) == without_ages(before)


@pytest.mark.django_db
def test_what_arrives_after_a_fold_is_counted_once_by_the_next(team, default_queue):
    world = build_world(team, default_queue)
    metrics_tallies_fold(batch=2)  # several batches of each
    running = JobExecution.objects.filter(status=ExecutionStatus.RUNNING).first()
    JobExecution.objects.filter(pk=running.pk).update(
        status=ExecutionStatus.FAILED, finished_at=timezone.now()
    )
    JobRetry.objects.create(
        job=running.job, attempt=running.attempt + 1, reason="exit code 1", due_at=world.now
    )
    schedule = JobSchedule.objects.get()
    JobScheduleRun.objects.create(
        schedule=schedule,
        due_at=world.now + timedelta(minutes=5),
        fired_at=world.now + timedelta(minutes=5, seconds=0.3),
        outcome="submitted",
    )
    queue = running.job.queue.name
    keys = [
        ("scheduler_jobs_finished_total", (("outcome", "failed"), ("queue", queue))),
        ("scheduler_retries_total", (("queue", queue),)),
        ("scheduler_schedule_runs_total", (("outcome", "submitted"),)),
    ]
    truth = recount()
    assert without_ages(scrape()) == without_ages(truth)  # the new ones read live
    assert metrics_tallies_fold() == {"executions": 1, "schedule_runs": 1, "retries": 1}
    after = scrape()
    assert without_ages(after) == without_ages(truth)  # now from the tallies
    assert [after[key] for key in keys] == [truth[key] for key in keys]
    assert all(truth[key] >= 1 for key in keys)


@pytest.mark.django_db
def test_a_counter_keeps_what_was_folded_when_its_rows_are_deleted(team, default_queue):
    build_world(team, default_queue)
    metrics_tallies_fold()
    before = scrape()
    Job.objects.filter(status__in=["succeeded", "failed", "cancelled"]).delete()
    JobSchedule.objects.all().delete()
    assert not JobScheduleRun.objects.exists()
    assert_counters_kept(before, scrape())


@pytest.mark.django_db(transaction=True)
def test_the_leader_folds_at_its_interval(team, default_queue, settings):
    settings.METRICS_FOLD_SECONDS = 60
    settings.NODE_LOST_CHECK_SECONDS = 0  # never: only the fold is looked at
    settings.RECONCILE_INTERVAL_SECONDS = 0
    build_world(team, default_queue)
    scheduler = Scheduler(tick_seconds=5, batch_size=10)
    scheduler.maintain()
    assert not JobExecution.objects.filter(
        status__in=ENDED_EXECUTION_STATUSES, metrics_folded=False
    ).exists()
    assert not JobScheduleRun.objects.filter(metrics_folded=False).exists()
    JobExecution.objects.filter(status=ExecutionStatus.RUNNING).update(
        status=ExecutionStatus.SUCCEEDED, finished_at=timezone.now()
    )
    scheduler.maintain()  # not again before its interval
    assert JobExecution.objects.filter(
        status=ExecutionStatus.SUCCEEDED, metrics_folded=False
    ).exists()
    assert 50 < scheduler.seconds_to_maintenance() <= 60


@pytest.mark.django_db(transaction=True)
def test_folds_scrapes_and_finishes_racing_count_every_execution_once(team, default_queue):
    """Two folders (small batches, each commit a moment a scrape could fall between),
    a scraper and a finisher, each on a PostgreSQL connection of its own; schedule runs
    are folded meanwhile too."""
    node = Node.objects.create(name="n1", cpu_millis=1000, memory_mb=1000)
    jobs = make_jobs(team, 400)
    now = timezone.now()
    JobExecution.objects.bulk_create(
        JobExecution(
            job=job,
            attempt=1,
            node=node,
            token=f"race-{job.pk}",
            status=ExecutionStatus.SUCCEEDED if i % 2 else ExecutionStatus.RUNNING,
            reserved_at=now - timedelta(seconds=3),
            started_at=now - timedelta(seconds=2),
            finished_at=now - timedelta(seconds=1) if i % 2 else None,
        )
        for i, job in enumerate(jobs)
    )
    running = list(
        JobExecution.objects.filter(status=ExecutionStatus.RUNNING).values_list("pk", flat=True)
    )
    definition = JobDefinition.objects.create(
        team=team, queue=default_queue, name="minutely", command=["true"]
    )
    schedule = JobSchedule.objects.create(
        team=team, definition=definition, name="minutely", interval_seconds=60
    )
    JobScheduleRun.objects.bulk_create(
        JobScheduleRun(
            schedule=schedule,
            due_at=now - timedelta(minutes=m),
            fired_at=now - timedelta(minutes=m),
            outcome="submitted",
        )
        for m in range(300)
    )
    stop = threading.Event()
    seen, reported, errors = [], [], []

    def on_own_connection(work):
        def run():
            try:
                work()
            except Exception as exc:  # reported below
                errors.append(exc)
            finally:
                connection.close()

        return threading.Thread(target=run)

    def fold():
        while not stop.is_set():
            metrics_tallies_fold(batch=7, budget_seconds=0.05)

    def read():
        while not stop.is_set():
            figures = execution_figures()
            runs, _ = schedule_run_figures()
            seen.append((figures.placements, sum(figures.finished.values()), sum(runs.values())))
            (usage,) = usage_report(user=User(is_staff=True), query=USAGE)
            reported.append(usage["attempts"])

    def finish():
        for pk in running:
            JobExecution.objects.filter(pk=pk).update(
                status=ExecutionStatus.SUCCEEDED, finished_at=timezone.now()
            )

    threads = [on_own_connection(work) for work in (fold, fold, read)]
    finisher = on_own_connection(finish)
    for thread in [*threads, finisher]:
        thread.start()
    finisher.join(60)
    stop.set()
    for thread in threads:
        thread.join(60)
    assert errors == []

    # Every scrape saw all 400 executions once, and between 200 and 400 of them ended,
    # never fewer than an earlier scrape saw.
    assert len(seen) > 10
    assert {placements for placements, _, _ in seen} == {400}
    assert {runs for _, _, runs in seen} == {300}
    ended = [n for _, n, _ in seen]
    assert ended == sorted(ended) and ended[0] >= 200 and ended[-1] <= 400
    # So did every usage report.
    assert reported == sorted(reported) and reported[0] >= 200 and reported[-1] <= 400
    metrics_tallies_fold()
    assert not JobExecution.objects.filter(metrics_folded=False).exists()
    assert sum(ScheduleRunTally.objects.values_list("runs", flat=True)) == 300
    tallied = ExecutionTally.objects.filter(of_waits=False)
    assert sum(tallied.values_list("executions", flat=True)) == 400
    assert set(tallied.values_list("status", flat=True)) == {ExecutionStatus.SUCCEEDED}
    assert sum(ExecutionTally.objects.filter(of_waits=True).values_list("waits", flat=True)) == 400
    assert sum(UsageTally.objects.values_list("attempts", flat=True)) == 400
