"""A large job, or a gang, is not starved by a stream of small ones: it gets a
reservation, starts by its reserved start, and small jobs backfill around it until then
(real scheduler and node agents)."""

import time
from datetime import UTC, datetime

import pytest

from jobs.models import Job, JobExecution, JobStatus, PendingReason
from tests.processes import wait_until

pytestmark = pytest.mark.e2e

SMALL = {"name": "small", "command": ["sleep", "1"], "resources": {"cpu": 1}, "timeout_seconds": 2}
SMALL_BACKLOG = 3  # small jobs kept waiting, so the node never runs dry
STREAM_SECONDS_BEFORE = 2.0


def submit(api, spec) -> int:
    response = api.post("/api/jobs/", spec, format="json")
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def top_up(api, small_ids: list[int]) -> None:
    waiting = Job.objects.filter(pk__in=small_ids, status=JobStatus.PENDING).count()
    for _ in range(SMALL_BACKLOG - waiting):
        small_ids.append(submit(api, SMALL))


def run_starvation(api, large_spec: dict) -> None:
    """Keep the nodes busy with a stream of small jobs, behind a 1-CPU anchor with a long
    limit, submit the large job (or gang) into it, and check that it starts by its
    reserved start, that small jobs backfilled meanwhile, and that none overlapped it."""
    # The large job's reserved start is the anchor's end by its limit, so the small jobs
    # (1 s, limit 2 s) have a window to backfill in, until it ends (early: the reserved
    # start then comes closer).
    anchor = submit(
        api,
        {
            "name": "anchor",
            "command": ["sleep", "4"],
            "resources": {"cpu": 1},
            "timeout_seconds": 8,
        },
    )
    wait_until(lambda: Job.objects.get(pk=anchor).status == JobStatus.RUNNING, 15)
    small_ids: list[int] = []
    until = time.monotonic() + STREAM_SECONDS_BEFORE
    while time.monotonic() < until:
        top_up(api, small_ids)
        time.sleep(0.05)

    big = submit(api, large_spec)
    reserved_start = reserved_seen = None
    deadline = time.monotonic() + 30
    while True:
        job = Job.objects.get(pk=big)
        if job.status != JobStatus.PENDING:
            break
        if reserved_start is None and job.pending_reason == PendingReason.RESERVATION:
            reserved_start, reserved_seen = job.reservation_start_at, time.time()
        assert time.monotonic() < deadline, "the large job starved behind the small ones"
        top_up(api, small_ids)
        time.sleep(0.05)

    tasks = large_spec.get("tasks", 1)
    runs = JobExecution.objects.filter(job_id=big)
    wait_until(lambda: runs.filter(started_at__isnull=False).count() == tasks, 15)
    job = Job.objects.get(pk=big)
    assert reserved_start is not None, "the large job never had a reservation"
    last_start = max(run.started_at for run in runs)
    lateness = (last_start - reserved_start).total_seconds()
    assert lateness <= 2, f"started {lateness:.1f} s after its reserved start"
    # Small jobs went on starting on the room the reservation did not need yet.
    backfilled = Job.objects.filter(
        pk__in=small_ids, started_at__gt=job.created_at, started_at__lt=job.started_at
    )
    assert backfilled.filter(started_at__gt=datetime.fromtimestamp(reserved_seen, tz=UTC)).exists()
    # And none of them overlapped the large job on its nodes: it had all their CPUs.
    during = Job.objects.filter(pk__in=small_ids, started_at__lt=last_start).exclude(
        finished_at__lte=job.started_at
    )
    assert not during.exists()


def test_a_large_job_starts_by_its_reserved_start_while_small_ones_backfill(cluster, api):
    cluster.start_node("node-a", cpu=4, slots=6)
    cluster.start_scheduler()
    run_starvation(
        api,
        {
            "name": "big",
            "command": ["sleep", "0.2"],
            "resources": {"cpu": 4},
            "timeout_seconds": 10,
        },
    )


def test_a_gang_starts_by_its_reserved_start_on_all_its_nodes_while_small_ones_backfill(
    cluster, api
):
    # Two 2-CPU nodes and a gang of two 2-CPU tasks: its reservation takes in both.
    cluster.start_node("node-a", cpu=2, slots=4)
    cluster.start_node("node-b", cpu=2, slots=4)
    cluster.start_scheduler()
    run_starvation(
        api,
        {
            "name": "gang",
            "command": ["sleep", "0.2"],
            "resources": {"cpu": 2},
            "tasks": 2,
            "timeout_seconds": 10,
        },
    )
