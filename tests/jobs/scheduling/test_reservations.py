"""Reservation and backfill in the scheduling cycle and in placement on freed room,
against the real database: the first job that finds no room gets a reservation, and
the jobs after it start only if, by their time limits, they cannot delay it."""

from datetime import timedelta

import pytest
from django.db import transaction

from events.models import Event, EventType
from jobs.accounting import Success
from jobs.models import Job, JobExecution, JobStatus, PendingReason
from jobs.scheduling.cycle import place_pending_jobs
from jobs.scheduling.freed_room import place_on_freed_room
from jobs.services.executions import execution_claim, executions_finish_succeeded
from jobs.services.submission import job_submit
from nodes.models import Node
from resources.models import Queue
from tests.jobs.making import make_jobs

pytestmark = pytest.mark.django_db


def run_on(node, team, *timeouts) -> dict[int, JobExecution]:
    """1-CPU jobs with these time limits, placed and claimed on the node: timeout -> run."""
    jobs = [make_jobs(team, 1, timeout_seconds=t)[0] for t in timeouts]
    tokens = place_pending_jobs(batch_size=100).tokens
    assert len(tokens) == len(jobs)
    for token in tokens:
        assert execution_claim(token=token, node_id=node.id) is not None
    return {
        job.timeout_seconds: JobExecution.objects.get(job=job)
        for job in Job.objects.filter(pk__in=[j.pk for j in jobs])
    }


def state(job) -> tuple[str, str]:
    job.refresh_from_db()
    return job.status, job.pending_reason


def test_the_first_job_without_room_gets_a_reservation_and_only_short_jobs_backfill(team, broker):
    node = Node.objects.create(name="one", cpu_millis=4000, memory_mb=4096)
    running = run_on(node, team, 10, 20, 30)
    big = make_jobs(team, 1, cpu_millis=4000, timeout_seconds=60)[0]
    long = make_jobs(team, 1, timeout_seconds=100)[0]
    short = make_jobs(team, 1, timeout_seconds=5)[0]

    result = place_pending_jobs(batch_size=100)

    assert result.placed == 1
    assert result.waiting == {"reservation": 1, "would_delay_reservation": 1}
    assert state(big) == (JobStatus.PENDING, PendingReason.RESERVATION)
    assert big.reservation_node_id == node.id
    # The last of the three running jobs' limits frees the fourth CPU.
    assert big.reservation_start_at == running[30].started_at + timedelta(seconds=30)
    assert state(long) == (JobStatus.PENDING, PendingReason.WOULD_DELAY_RESERVATION)
    assert state(short) == (JobStatus.RESERVED, "")
    event = Event.objects.get(type=EventType.JOB_RESERVED)
    assert (event.job_id, event.node_id) == (big.id, node.id)

    # Again: the same reservation is not written, nor told, twice.
    place_pending_jobs(batch_size=100)
    assert Event.objects.filter(type=EventType.JOB_RESERVED).count() == 1
    assert state(big) == (JobStatus.PENDING, PendingReason.RESERVATION)


def test_a_node_running_a_job_without_a_time_limit_gets_no_reservation(team, broker):
    node = Node.objects.create(name="one", cpu_millis=2000, memory_mb=4096)
    run_on(node, team, None)
    big = make_jobs(team, 1, cpu_millis=2000, timeout_seconds=60)[0]
    long = make_jobs(team, 1, timeout_seconds=100)[0]
    place_pending_jobs(batch_size=100)
    # Its expected start is unknown: it waits as before, and does not hold others back.
    assert state(big) == (JobStatus.PENDING, PendingReason.INSUFFICIENT_CAPACITY)
    assert state(long) == (JobStatus.RESERVED, "")


def test_a_job_held_back_goes_to_another_node(team, broker):
    reserved = Node.objects.create(name="a", cpu_millis=2000, memory_mb=4096)
    run_on(reserved, team, 30)
    other = Node.objects.create(name="b", cpu_millis=1000, memory_mb=4096)
    big = make_jobs(team, 1, cpu_millis=2000, timeout_seconds=60)[0]
    long = make_jobs(team, 1, timeout_seconds=100)[0]
    place_pending_jobs(batch_size=100)
    assert state(big) == (JobStatus.PENDING, PendingReason.RESERVATION)
    assert big.reservation_node_id == reserved.id
    # Bin-packing would put it on `a`, where it would delay the big job.
    assert state(long) == (JobStatus.RESERVED, "")
    assert long.last_execution.node_id == other.id


def test_a_new_reservation_takes_it_from_the_job_that_held_it(team, broker):
    node = Node.objects.create(name="one", cpu_millis=2000, memory_mb=4096)
    run_on(node, team, 30)
    first = make_jobs(team, 1, cpu_millis=2000, timeout_seconds=60)[0]
    place_pending_jobs(batch_size=100)
    assert state(first) == (JobStatus.PENDING, PendingReason.RESERVATION)
    urgent = make_jobs(team, 1, cpu_millis=2000, timeout_seconds=60, priority=9)[0]
    place_pending_jobs(batch_size=100)
    assert state(urgent) == (JobStatus.PENDING, PendingReason.RESERVATION)
    assert state(first) == (JobStatus.PENDING, PendingReason.INSUFFICIENT_CAPACITY)
    assert Job.objects.filter(pending_reason=PendingReason.RESERVATION).count() == 1


def test_a_cycle_with_a_reservation_adds_two_queries_once(team, broker, django_assert_num_queries):
    node = Node.objects.create(name="one", cpu_millis=2000, memory_mb=4096)
    run_on(node, team, 30)
    make_jobs(team, 1, cpu_millis=2000, timeout_seconds=60)
    make_jobs(team, 20, timeout_seconds=100)
    # savepoint, a look for room, nodes, pending jobs, the room held for preempting jobs,
    # the running executions' limits, pending reasons, the reservation, its event,
    # release savepoint
    with django_assert_num_queries(10):
        place_pending_jobs(batch_size=100)
    # The same reservation again: only the running executions' limits are read anew.
    with django_assert_num_queries(7):
        place_pending_jobs(batch_size=100)


def finish(node, *runs):
    with transaction.atomic():
        executions_finish_succeeded([Success(run.token) for run in runs], wake=False)
        return place_on_freed_room(node_id=node.id)


def test_freed_room_reserves_for_a_large_job_and_backfills_only_short_ones(team, broker):
    node = Node.objects.create(name="one", cpu_millis=4000, memory_mb=4096)
    running = run_on(node, team, 10, 20, 30, 40)
    big = make_jobs(team, 1, cpu_millis=4000, timeout_seconds=60)[0]
    long = make_jobs(team, 1, timeout_seconds=100)[0]
    short = make_jobs(team, 1, timeout_seconds=5)[0]
    place_pending_jobs(batch_size=100)  # a full cluster: told why they wait, nothing more
    assert state(big) == (JobStatus.PENDING, PendingReason.INSUFFICIENT_CAPACITY)

    # The stream's next finish frees one CPU: it goes to the short job, not the long one.
    result = finish(node, running[10])
    assert [token for token, _ in result.placements] == [f"job-{short.id}-attempt-1"]
    assert state(big) == (JobStatus.PENDING, PendingReason.RESERVATION)
    assert big.reservation_start_at == running[40].started_at + timedelta(seconds=40)
    assert state(long) == (JobStatus.PENDING, PendingReason.WOULD_DELAY_RESERVATION)

    # Another finish: the long job would still delay it.
    result = finish(node, running[20])
    assert result.placements == []
    assert state(long) == (JobStatus.PENDING, PendingReason.WOULD_DELAY_RESERVATION)


def test_freed_room_elsewhere_is_not_held_for_a_reservation(team, broker):
    reserved = Node.objects.create(name="a", cpu_millis=2000, memory_mb=4096)
    on_reserved = run_on(reserved, team, 30, 31)
    other = Node.objects.create(name="b", cpu_millis=1000, memory_mb=4096)
    on_other = run_on(other, team, 30)
    big = make_jobs(team, 1, cpu_millis=2000, timeout_seconds=60)[0]
    long = make_jobs(team, 1, timeout_seconds=100)[0]
    place_pending_jobs(batch_size=100)
    finish(reserved, on_reserved[30])
    assert state(big) == (JobStatus.PENDING, PendingReason.RESERVATION)
    assert state(long) == (JobStatus.PENDING, PendingReason.WOULD_DELAY_RESERVATION)

    result = finish(other, on_other[30])
    assert [token for token, _ in result.placements] == [f"job-{long.id}-attempt-1"]
    assert state(big) == (JobStatus.PENDING, PendingReason.RESERVATION)


def test_a_job_without_a_time_limit_gets_its_queues_default(team):
    Node.objects.create(name="one", cpu_millis=2000, memory_mb=4096)
    queue = Queue.objects.create(name="timed", all_teams=True, default_timeout_seconds=600)
    spec = {"name": "j", "command": ["true"], "cpu_millis": 1000, "memory_mb": 100, "gpu": 0}
    assert job_submit(team=team, spec={**spec, "queue": "timed"}).job.timeout_seconds == 600
    own = job_submit(team=team, spec={**spec, "queue": "timed", "timeout_seconds": 5}).job
    assert own.timeout_seconds == 5
    assert job_submit(team=team, spec=spec).job.timeout_seconds is None
    assert queue.default_timeout_seconds == 600
