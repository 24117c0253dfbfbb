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


def started(node, team, cpu_millis: int, timeout: int) -> JobExecution:
    """A job of this size and time limit, placed and claimed on the node (where binpack
    puts it: the caller sees to it that it is `node`)."""
    job = make_jobs(team, 1, cpu_millis=cpu_millis, timeout_seconds=timeout)[0]
    [token] = place_pending_jobs(batch_size=100).tokens
    assert execution_claim(token=token, node_id=node.id) is not None
    return JobExecution.objects.get(job=job)


@pytest.fixture
def gang_world(team, broker):
    """Two 2-CPU nodes: `a` runs a 1-CPU job for 30 s at most, `b` a 2-CPU job for
    20 s, and a half-CPU node `c` one for 50 s; a gang of two 2-CPU tasks waits, and so do
    a long and a short half-CPU job."""
    a = Node.objects.create(name="a", cpu_millis=2000, memory_mb=4096)
    on_a = started(a, team, 1000, 30)
    b = Node.objects.create(name="b", cpu_millis=2000, memory_mb=4096)
    on_b = started(b, team, 2000, 20)
    c = Node.objects.create(name="c", cpu_millis=500, memory_mb=4096)
    on_c = started(c, team, 500, 50)
    gang = make_jobs(team, 1, cpu_millis=2000, tasks=2, timeout_seconds=60)[0]
    long = make_jobs(team, 1, cpu_millis=500, timeout_seconds=100)[0]
    short = make_jobs(team, 1, cpu_millis=500, timeout_seconds=5)[0]
    return a, b, c, on_a, on_b, on_c, gang, long, short


def test_a_gang_without_room_gets_a_reservation_on_all_the_nodes_its_tasks_need(gang_world, api):
    a, b, _, on_a, _, _, gang, long, short = gang_world

    result = place_pending_jobs(batch_size=100)

    assert result.waiting == {"reservation": 1, "would_delay_reservation": 1}
    assert state(gang) == (JobStatus.PENDING, PendingReason.RESERVATION)
    # Both nodes are free when `a`'s job has used up its limit, the later of the two.
    assert gang.reservation_start_at == on_a.started_at + timedelta(seconds=30)
    assert (gang.reservation_node_id, gang.reservation_nodes) == (a.id, [a.id, b.id])
    # The long job fits `a` now, but would still hold room there then; the short
    # one has ended by then.
    assert state(long) == (JobStatus.PENDING, PendingReason.WOULD_DELAY_RESERVATION)
    assert state(short) == (JobStatus.RESERVED, "")
    event = Event.objects.get(type=EventType.JOB_RESERVED)
    assert event.job_id == gang.id
    assert event.message.startswith("room reserved on nodes a, b, expected start")
    assert event.data["tasks_on"] == {"a": 1, "b": 1}

    body = api.get(f"/api/jobs/{gang.pk}/why/").json()
    [reserved] = [item for item in body["waits_on"] if item["kind"] == "reservation"]
    assert reserved["nodes"] == ["a", "b"]
    assert "on nodes a, b" in body["summary"]
    body = api.get(f"/api/jobs/{long.pk}/why/").json()
    [held] = [item for item in body["waits_on"] if item["kind"] == "would_delay"]
    assert held["job"] == gang.id
    assert f"would delay job {gang.id}" in held["summary"]

    # Again: the same reservation is neither written nor told twice.
    place_pending_jobs(batch_size=100)
    assert Event.objects.filter(type=EventType.JOB_RESERVED).count() == 1


def test_freed_room_on_a_gangs_node_backfills_only_what_cannot_delay_it(gang_world, team):
    _, b, elsewhere, _, on_b, on_elsewhere, gang, long, _ = gang_world
    place_pending_jobs(batch_size=100)
    assert state(gang) == (JobStatus.PENDING, PendingReason.RESERVATION)
    brief = make_jobs(team, 1, cpu_millis=2000, timeout_seconds=5)[0]
    place_pending_jobs(batch_size=100)  # told why it waits: no node has 2 CPUs free
    assert state(brief) == (JobStatus.PENDING, PendingReason.INSUFFICIENT_CAPACITY)

    # `b`'s job ends: its room, all of which a gang task needs at the reserved start,
    # goes to the job that ends before then, not to the long one.
    result = finish(b, on_b)
    assert [token for token, _ in result.placements] == [f"job-{brief.id}-attempt-1"]
    assert state(long) == (JobStatus.PENDING, PendingReason.WOULD_DELAY_RESERVATION)
    # And the gang's reservation is as the scheduler wrote it, on both nodes.
    assert state(gang) == (JobStatus.PENDING, PendingReason.RESERVATION)
    assert len(gang.reservation_nodes) == 2

    # Room freed on a node the gang cannot use is placed on at once.
    result = finish(elsewhere, on_elsewhere)
    assert [token for token, _ in result.placements] == [f"job-{long.id}-attempt-1"]
    assert state(gang) == (JobStatus.PENDING, PendingReason.RESERVATION)


def test_while_a_gang_waits_for_room_unreserved_freed_room_is_left_to_the_scheduler(gang_world):
    _, _, elsewhere, _, _, on_elsewhere, gang, long, _ = gang_world
    # As a cycle that found every node full leaves it: it reserves nothing then.
    Job.objects.filter(pk=gang.pk).update(pending_reason=PendingReason.GANG_DOES_NOT_FIT)

    # A finish would hand its room to the jobs behind the gang, and so on for ever, with
    # no cycle seeing room to reserve for it: the room is the scheduler's.
    assert finish(elsewhere, on_elsewhere) is None
    assert state(long)[0] == JobStatus.PENDING

    result = place_pending_jobs(batch_size=100)
    assert state(gang) == (JobStatus.PENDING, PendingReason.RESERVATION)
    # The long job goes where it cannot delay the gang.
    assert state(long) == (JobStatus.RESERVED, "")
    assert dict(result.placements)[f"job-{long.id}-attempt-1"] == "c"


def test_a_gang_that_loses_its_reservation_waits_as_a_gang_again(gang_world, team):
    gang = gang_world[6]
    place_pending_jobs(batch_size=100)
    assert state(gang) == (JobStatus.PENDING, PendingReason.RESERVATION)
    urgent = make_jobs(team, 1, cpu_millis=2000, timeout_seconds=60, priority=9)[0]
    place_pending_jobs(batch_size=100)
    assert state(urgent) == (JobStatus.PENDING, PendingReason.RESERVATION)
    assert state(gang) == (JobStatus.PENDING, PendingReason.GANG_DOES_NOT_FIT)


def test_with_a_job_without_a_time_limit_placed_freed_room_does_not_wait_on_a_gang(gang_world):
    _, _, elsewhere, on_a, _, on_elsewhere, gang, long, _ = gang_world
    # As a cycle that found every node full leaves them.
    Job.objects.filter(pk=gang.pk).update(pending_reason=PendingReason.GANG_DOES_NOT_FIT)
    Job.objects.filter(pk=long.pk).update(pending_reason=PendingReason.INSUFFICIENT_CAPACITY)
    # `a`'s job has no limit: the gang may never get a reservation, so nothing is held
    # back for one.
    Job.objects.filter(pk=on_a.job_id).update(timeout_seconds=None)
    result = finish(elsewhere, on_elsewhere)
    assert [token for token, _ in result.placements] == [f"job-{long.id}-attempt-1"]
