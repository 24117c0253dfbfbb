"""Ended executions folded into the metrics' tallies: a fold changes no figure, counts
each execution once however folds, scrapes and finishes interleave, and the scheduler's
leader runs it at its interval."""

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from jobs.metrics.figures import execution_figures
from jobs.models import ExecutionStatus, ExecutionTally, Job, JobExecution
from jobs.scheduling.leader import Scheduler
from jobs.services.execution_tally import ENDED_EXECUTION_STATUSES, executions_tally_fold
from nodes.models import Node
from tests.jobs.making import make_jobs
from tests.jobs.metrics_world import EXPECTED, build_world, scrape

AGE = "scheduler_oldest_pending_job_age_seconds"


class Recounted(Exception):
    pass


def recount() -> dict:
    """The figures as they were before any fold: every execution read again."""
    figures = {}
    try:
        with transaction.atomic():
            JobExecution.objects.update(metrics_folded=False)
            ExecutionTally.objects.all().delete()
            figures = scrape()
            raise Recounted
    except Recounted:
        return figures


def without_ages(values: dict) -> dict:
    return {key: value for key, value in values.items() if key[0] != AGE}


@pytest.mark.django_db
def test_a_fold_takes_the_ended_executions_and_changes_no_figure(team, default_queue):
    world = build_world(team, default_queue)
    before = scrape()
    ended = JobExecution.objects.filter(status__in=ENDED_EXECUTION_STATUSES)
    assert ended.count() > 0

    assert executions_tally_fold() == {"folded": ended.count()}
    assert set(JobExecution.objects.filter(metrics_folded=True)) == set(ended)
    after = scrape()
    assert without_ages(after) == without_ages(before)
    assert {key: after[key] for key in EXPECTED} == pytest.approx(EXPECTED, abs=1e-6)
    # Nothing is left to fold, and folding again counts nothing twice.
    assert executions_tally_fold() == {"folded": 0}
    assert without_ages(scrape()) == without_ages(before)
    assert world.jobs


@pytest.mark.django_db
def test_an_execution_that_ends_after_a_fold_is_counted_once_by_the_next(team, default_queue):
    build_world(team, default_queue)
    executions_tally_fold(batch=2)  # several batches
    running = JobExecution.objects.filter(status=ExecutionStatus.RUNNING).first()
    JobExecution.objects.filter(pk=running.pk).update(
        status=ExecutionStatus.FAILED, finished_at=timezone.now()
    )
    key = (
        "scheduler_jobs_finished_total",
        (("outcome", "failed"), ("queue", running.job.queue.name)),
    )
    truth = recount()
    assert without_ages(scrape()) == without_ages(truth)  # the new one read live
    assert executions_tally_fold() == {"folded": 1}
    assert without_ages(scrape()) == without_ages(truth)  # now from the tallies
    assert scrape()[key] == truth[key] >= 1


@pytest.mark.django_db
def test_a_counter_keeps_what_was_folded_when_the_jobs_are_deleted(team, default_queue):
    build_world(team, default_queue)
    executions_tally_fold()
    before = scrape()
    Job.objects.filter(status__in=["succeeded", "failed", "cancelled"]).delete()
    after = scrape()
    for name in ("scheduler_jobs_finished_total", "scheduler_job_run_seconds_count"):
        keys = [key for key in before if key[0] == name]
        assert keys and all(after[key] == before[key] for key in keys)


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
    a scraper and a finisher, each on a PostgreSQL connection of its own."""
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
    stop = threading.Event()
    seen, errors = [], []

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
            executions_tally_fold(batch=7, budget_seconds=0.05)

    def read():
        while not stop.is_set():
            figures = execution_figures()
            seen.append((figures.placements, sum(figures.finished.values())))

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
    assert {placements for placements, _ in seen} == {400}
    ended = [n for _, n in seen]
    assert ended == sorted(ended) and ended[0] >= 200 and ended[-1] <= 400
    executions_tally_fold()
    assert not JobExecution.objects.filter(metrics_folded=False).exists()
    tallied = ExecutionTally.objects.filter(of_waits=False)
    assert sum(tallied.values_list("executions", flat=True)) == 400
    assert set(tallied.values_list("status", flat=True)) == {ExecutionStatus.SUCCEEDED}
    assert sum(ExecutionTally.objects.filter(of_waits=True).values_list("waits", flat=True)) == 400
