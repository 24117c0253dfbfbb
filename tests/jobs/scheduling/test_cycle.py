"""One scheduling cycle, run in this process against the real database and broker."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from events.models import Event, EventType
from jobs.models import Job, JobExecution, JobStatus, PendingReason
from jobs.scheduling.cycle import MIN_JOBS_PER_QUEUE, jobs_per_queue, place_pending_jobs, run_cycle
from nodes.models import Node, NodeStatus
from resources.models import Allocation, AllocationStatus, Queue
from resources.placement import Strategy, Unplaced
from tests.jobs.making import make_jobs
from tests.processes import raw_connection, wait_until

pytestmark = pytest.mark.django_db


def test_it_fills_nodes_up_to_capacity_and_leaves_the_rest_waiting(
    team, broker, django_capture_on_commit_callbacks
):
    small = Node.objects.create(name="small", cpu_millis=2000, memory_mb=4096)
    large = Node.objects.create(name="large", cpu_millis=3000, memory_mb=4096)
    make_jobs(team, 7)
    # The messages go out once the cycle's transaction (here the test's) commits.
    with django_capture_on_commit_callbacks(execute=True):
        result = run_cycle(batch_size=100)
    assert result.placed == 5
    small.refresh_from_db()
    large.refresh_from_db()
    assert (small.allocated_cpu_millis, large.allocated_cpu_millis) == (2000, 3000)
    assert Job.objects.filter(status=JobStatus.RESERVED).count() == 5
    waiting = Job.objects.filter(status=JobStatus.PENDING)
    assert {j.pending_reason for j in waiting} == {PendingReason.INSUFFICIENT_CAPACITY}
    assert waiting.count() == 2
    assert Allocation.objects.filter(status=AllocationStatus.RESERVED).count() == 5
    # Every placed execution carries its token and points back at its job.
    for job in Job.objects.filter(status=JobStatus.RESERVED).select_related("last_execution"):
        assert job.attempts == 1
        assert job.last_execution.token == f"job-{job.id}-attempt-1"
    # One message per placement went to the queue of the node that holds it.
    assert broker.llen("node.small") == 2
    assert broker.llen("node.large") == 3


def test_a_placed_job_is_not_placed_again(team, broker):
    Node.objects.create(name="one", cpu_millis=8000, memory_mb=4096)
    make_jobs(team, 3)
    assert run_cycle(batch_size=10).placed == 3
    assert run_cycle(batch_size=10).placed == 0
    assert JobExecution.objects.count() == 3


def test_it_places_higher_priority_first(team, broker):
    Node.objects.create(name="one", cpu_millis=1000, memory_mb=4096)
    low = make_jobs(team, 1, priority=0)[0]
    high = make_jobs(team, 1, priority=5)[0]
    place_pending_jobs(batch_size=10)
    assert Job.objects.get(pk=high.pk).status == JobStatus.RESERVED
    assert Job.objects.get(pk=low.pk).status == JobStatus.PENDING


def test_it_leaves_jobs_that_are_not_due_yet_alone(team, broker):
    Node.objects.create(name="one", cpu_millis=4000, memory_mb=4096)
    later = make_jobs(team, 1, not_before=timezone.now() + timedelta(hours=1))[0]
    result = place_pending_jobs(batch_size=10)
    assert result.considered == 0
    later.refresh_from_db()
    assert (later.status, later.pending_reason) == (JobStatus.PENDING, PendingReason.NONE)


def test_it_honours_node_selectors_and_says_why_a_job_waits(team, broker):
    Node.objects.create(name="a1", cpu_millis=4000, memory_mb=4096, labels={"zone": "a"})
    Node.objects.create(name="b1", cpu_millis=4000, memory_mb=4096, labels={"zone": "b"})
    to_b = make_jobs(team, 2, node_selector={"zone": "b"})
    to_c = make_jobs(team, 1, node_selector={"zone": "c"})[0]
    place_pending_jobs(batch_size=10)
    assert set(JobExecution.objects.filter(job__in=to_b).values_list("node__name", flat=True)) == {
        "b1"
    }
    to_c.refresh_from_db()
    assert (to_c.status, to_c.pending_reason) == (JobStatus.PENDING, PendingReason.NODE_SELECTOR)


@pytest.mark.parametrize("status", [NodeStatus.CORDONED, NodeStatus.DRAINING, NodeStatus.OFFLINE])
def test_it_gives_no_new_work_to_nodes_that_are_not_ready(team, broker, status):
    Node.objects.create(name="resting", cpu_millis=4000, memory_mb=4096, status=status)
    job = make_jobs(team, 1)[0]
    place_pending_jobs(batch_size=10)
    job.refresh_from_db()
    assert (job.status, job.pending_reason) == (
        JobStatus.PENDING,
        PendingReason.INSUFFICIENT_CAPACITY,
    )


def test_a_quota_caps_a_queue_even_on_an_idle_cluster(team, broker):
    Node.objects.create(name="big", cpu_millis=16000, memory_mb=65536)
    capped = Queue.objects.create(name="capped", all_teams=True, quota_cpu_millis=2000)
    jobs = make_jobs(team, 5, queue=capped)
    result = place_pending_jobs(batch_size=10)
    assert result.placed == 2
    assert result.waiting == {PendingReason.QUEUE_QUOTA: 3}
    assert [j.pending_reason for j in Job.objects.filter(status=JobStatus.PENDING)] == [
        PendingReason.QUEUE_QUOTA
    ] * 3
    # What its jobs already hold counts: a second cycle places nothing more.
    assert place_pending_jobs(batch_size=10).placed == 0
    # Once one ends, one more may start.
    Allocation.objects.filter(execution__job=jobs[0]).update(
        status=AllocationStatus.RELEASED, released_at=timezone.now()
    )
    assert place_pending_jobs(batch_size=10).placed == 1


def test_a_long_backlog_in_one_queue_does_not_hide_another_queues_jobs(team, broker):
    Node.objects.create(name="one", cpu_millis=2000, memory_mb=4096)
    busy = Queue.objects.create(name="busy", all_teams=True)
    quiet = Queue.objects.create(name="quiet", all_teams=True)
    make_jobs(team, 20, queue=busy)  # all older than the quiet queue's job
    newcomer = make_jobs(team, 1, queue=quiet)[0]
    result = place_pending_jobs(batch_size=5)
    assert result.considered == 6
    assert result.batch_full
    newcomer.refresh_from_db()
    assert newcomer.status == JobStatus.RESERVED


def test_a_full_cluster_reads_only_the_jobs_no_cycle_has_looked_at(team, broker):
    Node.objects.create(name="one", cpu_millis=2000, memory_mb=4096)
    make_jobs(team, 5)
    assert place_pending_jobs(batch_size=100).placed == 2  # full now; three told why
    newcomers = make_jobs(team, 2)
    result = place_pending_jobs(batch_size=100)
    assert (result.considered, result.placed, result.batch_full) == (2, 0, False)
    for job in newcomers:
        job.refresh_from_db()
        assert job.pending_reason == PendingReason.INSUFFICIENT_CAPACITY


@pytest.mark.django_db(transaction=True)
def test_a_full_cluster_tells_arrivals_why_they_wait_without_waiting_for_node_locks(team, broker):
    node = Node.objects.create(name="one", cpu_millis=1000, memory_mb=4096)
    make_jobs(team, 1)
    assert place_pending_jobs(batch_size=100).placed == 1  # full now
    arrival = make_jobs(team, 1)[0]
    with raw_connection() as finishing, finishing.transaction():
        # As a finish holds its node's row while it frees room and places jobs on it.
        finishing.execute("SELECT 1 FROM nodes_node WHERE id = %s FOR UPDATE", [node.id])
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")  # a wait for the lock fails the test
            try:
                result = place_pending_jobs(batch_size=100)
            finally:
                cursor.execute("RESET lock_timeout")
    assert result.waiting == {PendingReason.INSUFFICIENT_CAPACITY.value: 1}
    arrival.refresh_from_db()
    assert arrival.pending_reason == PendingReason.INSUFFICIENT_CAPACITY


@pytest.mark.django_db(transaction=True)
def test_a_job_submitted_while_a_cycle_waits_for_the_node_locks_is_placed_after_it_was_made(
    team, broker
):
    """A cycle that began before a job was submitted, and waited for its node's row (held
    here as a finish holds it), places the job stamped after its submission: its placed
    event does not come before its submitted one in the timeline."""
    node = Node.objects.create(name="one", cpu_millis=1000, memory_mb=4096)
    done = {}

    def cycle():
        try:
            done["result"] = place_pending_jobs(batch_size=100)
        finally:
            connection.close()

    with raw_connection() as finishing, raw_connection() as watching:
        with finishing.transaction():
            finishing.execute("SELECT 1 FROM nodes_node WHERE id = %s FOR UPDATE", [node.id])
            thread = threading.Thread(target=cycle)
            thread.start()
            wait_until(
                lambda: watching.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%nodes_node%'"
                ).fetchone()[0],
                10,
                message="the cycle to wait for the node's row",
            )
            job = make_jobs(team, 1)[0]
        thread.join(10)
    assert done["result"].placed == 1
    execution = JobExecution.objects.get(job=job)
    assert execution.reserved_at >= job.created_at
    placed = Event.objects.get(job_id=job.id, type=EventType.JOB_PLACED)
    assert placed.at >= job.created_at


def test_a_cycle_reads_as_many_jobs_per_queue_as_the_free_room_could_take():
    assert jobs_per_queue(free_cpu_millis=1000, batch_size=10_000) == MIN_JOBS_PER_QUEUE
    assert jobs_per_queue(free_cpu_millis=1_000_000, batch_size=10_000) == 10_000
    assert jobs_per_queue(free_cpu_millis=50_000, batch_size=10_000) == 500
    assert jobs_per_queue(free_cpu_millis=1000, batch_size=10) == 10


def test_a_cycle_with_little_room_reads_a_window_and_says_there_may_be_more(team, broker):
    Node.objects.create(name="one", cpu_millis=1000, memory_mb=4096)
    make_jobs(team, MIN_JOBS_PER_QUEUE + 10, cpu_millis=1, memory_mb=1)
    result = place_pending_jobs(batch_size=10_000)
    assert result.considered == MIN_JOBS_PER_QUEUE
    assert result.placed == MIN_JOBS_PER_QUEUE
    assert result.batch_full  # the scheduler runs another cycle at once
    assert place_pending_jobs(batch_size=10_000).placed == 10


def test_a_spread_queue_uses_the_emptiest_nodes_and_a_binpack_queue_the_fullest(team, broker):
    for i in range(3):
        Node.objects.create(name=f"n{i}", cpu_millis=4000, memory_mb=4096)
    spread = Queue.objects.create(name="spread", all_teams=True, strategy=Strategy.SPREAD)
    make_jobs(team, 3, queue=spread)
    place_pending_jobs(batch_size=10)
    assert sorted(JobExecution.objects.values_list("node__name", flat=True)) == ["n0", "n1", "n2"]
    make_jobs(team, 2)  # the default queue bin-packs: both on one node, all now equal
    place_pending_jobs(batch_size=10)
    packed = JobExecution.objects.exclude(job__queue=spread).values_list("node__name", flat=True)
    assert list(packed) == ["n0", "n0"]


def test_a_higher_priority_queue_is_served_first(team, broker):
    Node.objects.create(name="one", cpu_millis=2000, memory_mb=4096)
    urgent = Queue.objects.create(name="urgent", all_teams=True, priority=10)
    make_jobs(team, 2)  # older, default queue
    first = make_jobs(team, 2, queue=urgent)
    place_pending_jobs(batch_size=10)
    assert {j.status for j in Job.objects.filter(pk__in=[j.pk for j in first])} == {
        JobStatus.RESERVED
    }


@pytest.mark.parametrize(("jobs", "nodes", "queues"), [(10, 5, 1), (300, 40, 4)])
def test_a_cycle_issues_the_same_number_of_queries_whatever_the_size(
    team, broker, jobs, nodes, queues, django_assert_num_queries
):
    Node.objects.bulk_create(
        [Node(name=f"n{i}", cpu_millis=64000, memory_mb=65536) for i in range(nodes)]
        + [
            Node(name=f"cordoned{i}", cpu_millis=1000, memory_mb=1024, status="cordoned")
            for i in range(3)
        ]
    )
    for q in range(queues):
        queue = Queue.objects.create(name=f"q{q}", all_teams=True, weight=q + 1)
        make_jobs(team, jobs // queues, queue=queue)
    make_jobs(team, 3, node_selector={"zone": "nowhere"})
    make_jobs(team, 2, cpu_millis=128000)  # more than any node has
    # savepoint, a look for room, nodes, pending jobs with their queues and usage, the
    # room held for preempting jobs, the placements' writes, pending reasons, release
    # savepoint
    with django_assert_num_queries(8):
        result = place_pending_jobs(batch_size=1000)
    assert result.placed == jobs
    assert result.waiting == {
        Unplaced.NODE_SELECTOR.value: 3,
        Unplaced.INSUFFICIENT_CAPACITY.value: 2,
    }


def test_run_cycle_turns_a_drained_node_with_nothing_left_into_a_cordoned_one(team, broker):
    drained = Node.objects.create(
        name="drained", cpu_millis=4000, memory_mb=4096, status=NodeStatus.DRAINING
    )
    busy = Node.objects.create(
        name="busy",
        cpu_millis=4000,
        memory_mb=4096,
        status=NodeStatus.DRAINING,
        allocated_cpu_millis=1000,
    )
    run_cycle(batch_size=10)
    drained.refresh_from_db()
    busy.refresh_from_db()
    assert (drained.status, busy.status) == (NodeStatus.CORDONED, NodeStatus.DRAINING)


def test_every_unplaced_reason_is_a_pending_reason():
    assert {reason.value for reason in Unplaced} <= set(PendingReason.values)
    from resources.models import PlacementStrategy

    assert set(PlacementStrategy.values) == {s.value for s in Strategy}
