"""Deadlines with a real scheduler, node agent, beat and control worker: earlier deadlines
start first among equal priority; a job still pending at its deadline ends cancelled with
the reason, and one still running is stopped with it.

The tests share one platform, each with a team of its own (`own_team`, `team_api`)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import Job, JobStatus
from tests.jobs.making import submit
from tests.processes import shared_cluster, wait_until

pytestmark = pytest.mark.e2e

ONE_CORE = {"resources": {"cpu": 1, "memory_mb": 64}}


@pytest.fixture(scope="module")
def platform_cluster(django_db_setup, django_db_blocker, tmp_path_factory):
    with shared_cluster(django_db_blocker, tmp_path_factory.mktemp("deadlines")) as cluster:
        cluster.start_node("solo", cpu=1, memory_mb=1024)
        cluster.start_scheduler()
        cluster.start_control_worker()
        cluster.start_beat()
        yield cluster


def test_earlier_deadlines_start_first_among_equal_priority(team_api, own_team):
    blocker = submit(team_api, name="blocker", command=["sleep", "2"], **ONE_CORE)
    wait_until(lambda: Job.objects.get(pk=blocker).status == JobStatus.RUNNING, 30)
    now = timezone.now()
    names = {
        "none": submit(team_api, name="none", command=["true"], **ONE_CORE),
        "late": submit(
            team_api,
            name="late",
            command=["true"],
            deadline=(now + timedelta(hours=2)).isoformat(),
            **ONE_CORE,
        ),
        "soon": submit(
            team_api,
            name="soon",
            command=["true"],
            deadline=(now + timedelta(hours=1)).isoformat(),
            **ONE_CORE,
        ),
    }
    wait_until(
        lambda: Job.objects.filter(team=own_team, status=JobStatus.SUCCEEDED).count() == 4,
        60,
        message="every job to succeed",
    )
    started = Job.objects.filter(pk__in=names.values()).order_by("started_at")
    assert [job.name for job in started] == ["soon", "late", "none"]


def test_jobs_past_their_deadline_are_cancelled_or_stopped_with_the_reason(team_api):
    now = timezone.now()
    running = submit(
        team_api,
        name="long",
        command=["sleep", "60"],
        deadline=(now + timedelta(seconds=4)).isoformat(),
        **ONE_CORE,
    )
    wait_until(lambda: Job.objects.get(pk=running).status == JobStatus.RUNNING, 30)
    waiting = submit(
        team_api,
        name="waits",
        command=["true"],
        deadline=(now + timedelta(seconds=2)).isoformat(),
        **ONE_CORE,
    )

    def ended(pk):
        return Job.objects.get(pk=pk).status == JobStatus.CANCELLED

    wait_until(lambda: ended(waiting) and ended(running), 40, message="both cancelled")
    for pk in (waiting, running):
        body = team_api.get(f"/api/jobs/{pk}/").json()
        assert body["cancel_reason"] == "deadline passed"
    assert Job.objects.get(pk=waiting).attempts == 0  # it never ran
    long = Job.objects.get(pk=running)
    assert long.finished_at < now + timedelta(seconds=30)  # stopped, not left to finish
    assert long.last_execution.status == "cancelled"
