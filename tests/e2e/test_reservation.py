"""A large job is not starved by a stream of small ones: it gets a reservation, starts by
its reserved start, and small jobs backfill around it until then (real scheduler and
node agent)."""

import time
from datetime import UTC, datetime

import pytest

from jobs.models import Job, JobStatus, PendingReason
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


def test_a_large_job_starts_by_its_reserved_start_while_small_ones_backfill(cluster, api):
    cluster.start_node("node-a", cpu=4, slots=6)
    cluster.start_scheduler()
    # A 1-CPU job with a long limit: the large job's reserved start is its end by that
    # limit, so the small jobs (1 s, limit 2 s) have a window to backfill in, until it
    # ends (early: the reserved start then comes closer).
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

    big = submit(
        api,
        {
            "name": "big",
            "command": ["sleep", "0.2"],
            "resources": {"cpu": 4},
            "timeout_seconds": 10,
        },
    )
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

    wait_until(lambda: Job.objects.get(pk=big).started_at is not None, 15)
    job = Job.objects.get(pk=big)
    assert reserved_start is not None, "the large job never had a reservation"
    lateness = (job.started_at - reserved_start).total_seconds()
    assert lateness <= 2, f"started {lateness:.1f} s after its reserved start"
    # Small jobs went on starting on the room the reservation did not need yet.
    backfilled = Job.objects.filter(
        pk__in=small_ids, started_at__gt=job.created_at, started_at__lt=job.started_at
    )
    assert backfilled.filter(started_at__gt=datetime.fromtimestamp(reserved_seen, tz=UTC)).exists()
    # And none of them overlapped the large job on the node: it had all four CPUs.
    during = Job.objects.filter(pk__in=small_ids, started_at__lt=job.started_at).exclude(
        finished_at__lte=job.started_at
    )
    assert not during.exists()
