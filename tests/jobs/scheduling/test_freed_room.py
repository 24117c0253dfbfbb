"""A finish places the jobs waiting for room on the room it freed on its node, by the
scheduling cycle's rules, in the finish's own transaction."""

import pytest
from django.db import transaction

from jobs.accounting import Success
from jobs.models import (
    DependencyCondition,
    Job,
    JobDependency,
    JobExecution,
    JobStatus,
    PendingReason,
)
from jobs.scheduling.cycle import place_pending_jobs
from jobs.scheduling.freed_room import FREED_ROOM_LOCK_ID, place_on_freed_room
from jobs.services.executions import execution_claim, executions_finish_succeeded
from nodes.models import Node, NodeStatus
from resources.models import AllocationStatus, Queue
from tests.jobs.making import make_jobs, start_running
from tests.processes import raw_connection

pytestmark = pytest.mark.django_db


def finish(node, *tokens):
    """What the node's success batching does with a batch of successes."""
    with transaction.atomic():
        assert len(executions_finish_succeeded([Success(t) for t in tokens], wake=False)) == len(
            tokens
        )
        return place_on_freed_room(node_id=node.id)


def status(job) -> tuple[str, str]:
    job.refresh_from_db()
    return job.status, job.pending_reason


def test_a_finish_places_the_next_waiting_job_on_its_node_in_the_cycles_order(team, broker):
    node = Node.objects.create(name="one", cpu_millis=2000, memory_mb=4096)
    make_jobs(team, 2)
    running = start_running(node)
    older, high = make_jobs(team, 1)[0], make_jobs(team, 1, priority=5)[0]
    assert place_pending_jobs(batch_size=100).placed == 0  # both told why they wait
    arrival = make_jobs(team, 1, priority=10)[0]  # no cycle has seen it yet

    result = finish(node, next(iter(running.values())))

    assert result.placements == [(f"job-{high.id}-attempt-1", "one")]
    assert not result.room_left
    assert status(high) == (JobStatus.RESERVED, "")
    assert high.last_execution.node_id == node.id
    assert status(older) == (JobStatus.PENDING, PendingReason.INSUFFICIENT_CAPACITY)
    # New arrivals are the scheduler's, which weighs every node for them.
    assert status(arrival) == (JobStatus.PENDING, PendingReason.NONE)
    node.refresh_from_db()
    assert node.allocated_cpu_millis == 2000


def test_a_finish_gives_its_room_to_the_team_holding_least_of_the_queue(team, other_team, broker):
    node = Node.objects.create(name="one", cpu_millis=2000, memory_mb=4096)
    make_jobs(team, 2)
    running = start_running(node)  # blue holds the whole node
    older = make_jobs(team, 1)[0]
    newer = make_jobs(other_team, 1)[0]
    assert place_pending_jobs(batch_size=100).placed == 0  # both told why they wait

    result = finish(node, next(iter(running.values())))

    # Blue still holds a CPU of the queue and red none: red's job goes first, though
    # blue's is older.
    assert result.placements == [(f"job-{newer.id}-attempt-1", "one")]
    assert status(newer) == (JobStatus.RESERVED, "")
    assert status(older) == (JobStatus.PENDING, PendingReason.INSUFFICIENT_CAPACITY)


def test_a_finish_keeps_to_queue_quotas(team, broker):
    node = Node.objects.create(name="one", cpu_millis=3000, memory_mb=4096)
    capped = Queue.objects.create(name="capped", all_teams=True, quota_cpu_millis=1000)
    first_capped = make_jobs(team, 1, queue=capped)[0]
    make_jobs(team, 2)
    running = start_running(node)
    assert len(running) == 3
    second_capped = make_jobs(team, 1, queue=capped)[0]
    default_waiting = make_jobs(team, 1)[0]
    place_pending_jobs(batch_size=100)
    assert status(second_capped) == (JobStatus.PENDING, PendingReason.QUEUE_QUOTA)

    default_running = next(t for j, t in running.items() if j != first_capped.id)
    result = finish(node, default_running)
    assert [t for t, _ in result.placements] == [f"job-{default_waiting.id}-attempt-1"]
    assert status(second_capped) == (JobStatus.PENDING, PendingReason.QUEUE_QUOTA)

    # Once the capped queue's running job ends, its waiting one fits the quota.
    result = finish(node, running[first_capped.id])
    assert [t for t, _ in result.placements] == [f"job-{second_capped.id}-attempt-1"]


def test_freed_room_is_claimed_for_as_many_jobs_as_threads_reported_listed_first(team, broker):
    node = Node.objects.create(name="one", cpu_millis=2000, memory_mb=4096)
    make_jobs(team, 2)
    running_tokens = list(start_running(node).values())
    waiting = make_jobs(team, 2)
    place_pending_jobs(batch_size=100)
    listed = []

    def before_claim(tokens):
        # The agent lists them in heartbeats before they are running.
        assert not Job.objects.filter(last_execution__token__in=tokens).exists()
        listed.extend(tokens)

    with transaction.atomic():
        executions_finish_succeeded([Success(t) for t in running_tokens], wake=False)
        result = place_on_freed_room(node_id=node.id, claim=1, before_claim=before_claim)

    first, second = (f"job-{job.id}-attempt-1" for job in waiting)
    assert listed == [first]
    assert [e.token for e in result.claimed] == [first]
    assert result.placements == [(second, "one")]
    claimed = JobExecution.objects.get(token=first)
    assert (claimed.status, claimed.job.status, claimed.allocation.status) == (
        "running",
        "running",
        AllocationStatus.ACTIVE,
    )
    assert claimed.started_at == claimed.job.started_at is not None
    assert execution_claim(token=first, node_id=node.id) is None  # a message for it is stale
    sent = JobExecution.objects.get(token=second)
    assert (sent.status, sent.job.status, sent.allocation.status) == (
        "reserved",
        "reserved",
        AllocationStatus.RESERVED,
    )


def test_a_job_claimed_on_freed_room_releases_the_jobs_waiting_for_it_to_start(team, broker):
    node = Node.objects.create(name="one", cpu_millis=1000, memory_mb=4096)
    make_jobs(team, 1)
    running_token = next(iter(start_running(node).values()))
    upstream = make_jobs(team, 1)[0]
    place_pending_jobs(batch_size=100)
    after_start, after_success = make_jobs(
        team, 2, pending_reason=PendingReason.WAITING_DEPENDENCIES
    )
    JobDependency.objects.create(job=after_start, upstream=upstream, on=DependencyCondition.STARTED)
    JobDependency.objects.create(job=after_success, upstream=upstream)

    with transaction.atomic():
        executions_finish_succeeded([Success(running_token)], wake=False)
        result = place_on_freed_room(node_id=node.id, claim=1)

    assert [e.job_id for e in result.claimed] == [upstream.id]
    assert status(after_start) == (JobStatus.PENDING, PendingReason.NONE)
    assert status(after_success) == (JobStatus.PENDING, PendingReason.WAITING_DEPENDENCIES)


@pytest.mark.parametrize("node_status", [NodeStatus.CORDONED, NodeStatus.DRAINING])
def test_a_node_that_takes_no_new_work_places_nothing_on_its_freed_room(team, broker, node_status):
    node = Node.objects.create(name="one", cpu_millis=1000, memory_mb=4096)
    make_jobs(team, 1)
    running = start_running(node)
    waiting = make_jobs(team, 1)[0]
    place_pending_jobs(batch_size=100)
    Node.objects.filter(pk=node.pk).update(status=node_status)
    assert finish(node, *running.values()) is None
    assert status(waiting) == (JobStatus.PENDING, PendingReason.INSUFFICIENT_CAPACITY)


def test_a_finish_leaves_its_room_to_the_scheduler_while_another_freed_room_is_filled(team, broker):
    node = Node.objects.create(name="one", cpu_millis=1000, memory_mb=4096)
    make_jobs(team, 1)
    running = start_running(node)
    waiting = make_jobs(team, 1)[0]
    place_pending_jobs(batch_size=100)
    with raw_connection() as other:
        other.execute("SELECT pg_advisory_lock(%s)", [FREED_ROOM_LOCK_ID])
        assert finish(node, *running.values()) is None
    assert status(waiting) == (JobStatus.PENDING, PendingReason.INSUFFICIENT_CAPACITY)
