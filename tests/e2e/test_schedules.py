"""Schedules against a real beat (DatabaseScheduler), control worker, scheduler and node."""

import itertools
import re
import time
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import Team
from jobs.models import Job, JobDefinition, JobSchedule, JobScheduleRun, JobStatus
from jobs.schedules import schedule_create, schedule_pause, schedule_resume, schedules_create_many
from resources.models import Queue
from tests.processes import Cluster, shared_cluster, wait_until

pytestmark = pytest.mark.e2e


def start_platform(cluster, slots: int = 4):
    """Everything but beat: a node, the scheduler and the control worker."""
    cluster.start_node("node-a", cpu=4, slots=slots)
    cluster.start_scheduler()
    cluster.start_control_worker()


def make_schedule(team, command, *, start_in=3.0, **fields) -> JobSchedule:
    definition = JobDefinition.objects.create(
        team=team,
        name=f"def-{fields.get('name', 'every')}",
        command=command,
        queue=Queue.objects.get(name="default"),
        cpu_millis=100,
        memory_mb=64,
    )
    start_at = timezone.now() + timedelta(seconds=start_in)
    fields.setdefault("name", "every")
    return schedule_create(
        team=team, definition=definition, fields={"start_at": start_at, **fields}
    )


def with_policy(team, policy: str, command, **fields) -> JobSchedule:
    """A schedule named after its concurrency policy."""
    return make_schedule(team, command, name=policy, concurrency_policy=policy, **fields)


def sleep_until(moment, extra=0.0):
    time.sleep(max(0.0, (moment - timezone.now()).total_seconds() + extra))


def runs(schedule, **filters):
    return list(JobScheduleRun.objects.filter(schedule=schedule, **filters).order_by("due_at"))


@dataclass
class Shared:
    cluster: Cluster
    every: JobSchedule
    forbid: JobSchedule
    replace: JobSchedule
    pausing: JobSchedule


class TestSideBySide:
    """Four schedules of one team on one platform (a node, the scheduler, the control
    worker and beat), made together so that their waits overlap; each test reads only
    its own schedule's runs and jobs."""

    @pytest.fixture(scope="class")
    @classmethod
    def shared(cls, django_db_setup, django_db_blocker, tmp_path_factory):
        with shared_cluster(django_db_blocker, tmp_path_factory.mktemp("schedules")) as cluster:
            team = Team.objects.create(name="Blue", slug="blue")
            start_platform(cluster, slots=8)
            cluster.start_beat()
            yield Shared(
                cluster=cluster,
                every=make_schedule(team, ["true"], interval_seconds=2),
                forbid=with_policy(team, "forbid", ["sleep", "5"], interval_seconds=2),
                replace=with_policy(team, "replace", ["sleep", "60"], interval_seconds=4),
                pausing=make_schedule(team, ["true"], name="pausing", interval_seconds=1),
            )

    @pytest.fixture(autouse=True)
    def logs_on_failure(self, shared, request):
        yield
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(shared.cluster.logs())

    def test_every_two_seconds_runs_each_due_time_once_and_on_time(self, shared):
        schedule = shared.every
        first = schedule.next_fire_at
        window_end = first + timedelta(seconds=20)
        sleep_until(window_end, 3)
        fired = runs(schedule, due_at__lt=window_end)
        due = [first + timedelta(seconds=2 * i) for i in range(10)]
        assert [run.due_at for run in fired] == due
        assert all(run.outcome == "submitted" and not run.catch_up for run in fired)
        jobs = Job.objects.filter(schedule_runs__in=fired)
        assert jobs.count() == 10
        lateness = [
            (run.job.started_at - run.due_at).total_seconds()
            for run in JobScheduleRun.objects.filter(pk__in=[r.pk for r in fired]).select_related(
                "job"
            )
        ]
        assert all(0 <= late <= 1.5 for late in lateness), lateness
        assert set(jobs.values_list("status", flat=True)) == {JobStatus.SUCCEEDED}

    def test_forbid_skips_overlapping_runs_and_records_it(self, shared):
        schedule = shared.forbid
        sleep_until(schedule.next_fire_at, 13)
        outcomes = [run.outcome for run in runs(schedule)]
        assert outcomes.count("skipped_running") >= 3, outcomes
        assert outcomes.count("submitted") >= 2, outcomes
        spans = sorted(
            (job.started_at, job.finished_at or timezone.now())
            for job in Job.objects.filter(schedule_runs__schedule=schedule).exclude(started_at=None)
        )
        for (_, ended), (started, _) in itertools.pairwise(spans):
            assert started >= ended, "two runs of a forbid schedule overlapped"

    def test_replace_cancels_the_running_job(self, shared):
        schedule = shared.replace
        wait_until(lambda: len(runs(schedule, outcome="submitted")) >= 3, 20, message="three runs")
        schedule_pause(schedule=schedule)
        fired = runs(schedule)
        assert {run.outcome for run in fired} == {"submitted"}
        for previous, run in itertools.pairwise(fired):
            assert run.cancelled_job_id == previous.job_id
        replaced = [run.job_id for run in fired[:-1]]

        def all_cancelled():
            jobs = Job.objects.filter(pk__in=replaced)
            return {job.status for job in jobs} == {JobStatus.CANCELLED} and jobs

        # Each was running (started) when the next due time replaced it.
        assert all(job.started_at for job in wait_until(all_cancelled, 10, message="cancels"))
        wait_until(
            lambda: Job.objects.get(pk=fired[-1].job_id).status == JobStatus.RUNNING,
            10,
            message="the last run",
        )

    def test_pause_stops_at_once_and_resume_does_not_catch_up(self, shared):
        schedule = shared.pausing
        wait_until(lambda: len(runs(schedule)) >= 3, 15, message="three runs")
        schedule_pause(schedule=schedule)
        paused_at = timezone.now()
        time.sleep(4)
        assert not JobScheduleRun.objects.filter(schedule=schedule, fired_at__gt=paused_at).exists()
        resumed = schedule_resume(schedule=schedule)
        time.sleep(4)
        after = runs(schedule, due_at__gt=paused_at)
        assert after[0].due_at == resumed.next_fire_at
        assert all(run.missed == 0 and not run.catch_up for run in after)
        assert 3 <= len(after) <= 5


def test_two_beats_at_once_make_one_job_per_due_time(cluster, team):
    start_platform(cluster)
    cluster.start_beat()
    cluster.start_beat()
    schedule = make_schedule(team, ["true"], interval_seconds=1, start_in=6)
    sleep_until(schedule.next_fire_at, 10)
    fired = runs(schedule, due_at__lt=timezone.now() - timedelta(seconds=1))
    assert len(fired) >= 6
    due_times = [run.due_at for run in fired]
    assert due_times == sorted(set(due_times))
    keys = list(Job.objects.values_list("idempotency_key", flat=True))
    assert len(keys) == len(set(keys))
    assert all(run.job_id is not None for run in fired)
    # Both beats really fired: the control worker got about two triggers per due time.
    control = cluster.process("control").log()
    received = len(re.findall(r"Task jobs\.fire_schedules?\[[^\]]+\] received", control))
    assert received >= 1.6 * len(fired), (received, len(fired))


def test_run_once_after_beat_downtime_runs_one_catch_up(cluster, team):
    start_platform(cluster)
    beat = cluster.start_beat()
    schedule = make_schedule(team, ["true"], interval_seconds=4, misfire_policy="run_once")
    wait_until(lambda: runs(schedule), 15, message="the first run")
    beat.stop()
    # On a loaded machine beat may have fired a second due time before it stopped:
    # count from the last run it made.
    before = runs(schedule)
    first = before[-1].due_at
    # Down across three due times (first + 4, 8, 12 s), then started again.
    sleep_until(first + timedelta(seconds=12), 0.2)
    cluster.start_beat()
    wait_until(
        lambda: len(runs(schedule, due_at__gt=first)) >= 3,
        30,
        message="a catch-up and two runs on time",
    )
    after = runs(schedule, due_at__gt=first)
    catch_up, on_time = after[0], after[1:]
    assert catch_up.outcome == "submitted" and catch_up.catch_up
    assert catch_up.due_at >= first + timedelta(seconds=12)
    # Every due time from first + 4 s to the catch-up's own is folded into it.
    assert catch_up.missed == (catch_up.due_at - first).total_seconds() // 4 - 1
    assert all(not run.catch_up and run.missed == 0 for run in on_time)
    # Beat restarted out of step with the due times; the catch-up lined it up again.
    lateness = [(run.fired_at - run.due_at).total_seconds() for run in on_time]
    assert all(seconds < 1 for seconds in lateness), lateness
    assert [run.due_at for run in on_time] == [
        catch_up.due_at + timedelta(seconds=4 * i) for i in range(1, len(on_time) + 1)
    ]
    assert Job.objects.count() == len(before) + len(after)


def test_ten_thousand_hourly_schedules_fire_their_boundary_once_and_keep_a_two_second_one_on_time(
    cluster, team
):
    """The issue's measure: 10,000 `M * * * *` schedules (M = i mod 60, about 167 due at
    every minute boundary) and a 2-second one, over 30 s across a minute boundary."""
    definition = JobDefinition.objects.create(
        team=team,
        name="true",
        command=["true"],
        queue=Queue.objects.get(name="default"),
        cpu_millis=100,
        memory_mb=16,
    )
    schedules_create_many(
        team=team,
        definition=definition,
        fields_list=[{"name": f"hourly-{i}", "cron": f"{i % 60} * * * *"} for i in range(10_000)],
    )
    start_platform(cluster)
    cluster.start_beat()
    # A 30 s window that starts at least 4 s from now (beat is loading the schedules)
    # and holds a minute boundary, with at least 2 s before it and 10 s after it.
    now = timezone.now()
    boundary = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    if boundary - now < timedelta(seconds=6):
        boundary += timedelta(minutes=1)
    start_at = max(now + timedelta(seconds=4), boundary - timedelta(seconds=20))
    every = schedule_create(
        team=team,
        definition=definition,
        fields={"name": "every-2s", "interval_seconds": 2, "start_at": start_at},
    )
    window_end = start_at + timedelta(seconds=30)
    sleep_until(window_end, 4)
    schedule_pause(schedule=every)

    fired = runs(every, due_at__lt=window_end)
    assert [run.due_at for run in fired] == [start_at + timedelta(seconds=2 * i) for i in range(15)]
    assert all(run.outcome == "submitted" and run.job_id for run in fired)
    assert all(run.missed == 0 and not run.catch_up for run in fired)

    due_then = JobSchedule.objects.filter(team=team, cron=f"{boundary.minute} * * * *")
    assert due_then.count() in (166, 167)
    at_boundary = JobScheduleRun.objects.filter(due_at=boundary, schedule__in=due_then)
    assert at_boundary.count() == due_then.count()
    assert set(at_boundary.values_list("outcome", flat=True)) == {"submitted"}
    assert at_boundary.values("schedule").distinct().count() == due_then.count()
    assert Job.objects.filter(schedule_runs__in=at_boundary).distinct().count() == due_then.count()
    # The hourly ones fired only at their own minutes (an earlier boundary may have
    # passed while the processes started), and no job was made twice.
    hourly_runs = JobScheduleRun.objects.filter(schedule__team=team, schedule__cron__gt="")
    for due_at, cron in hourly_runs.values_list("due_at", "schedule__cron"):
        assert cron == f"{due_at.minute} * * * *" and due_at.second == 0
    keys = list(Job.objects.values_list("idempotency_key", flat=True))
    assert len(keys) == len(set(keys))
