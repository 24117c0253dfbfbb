"""One scheduling cycle, run in this process against the real database and broker."""

import pytest

from jobs.models import Job, JobExecution, JobStatus, PendingReason
from nodes.models import Node, NodeStatus
from resources.cycle import place_pending_jobs, run_cycle
from resources.models import DEFAULT_QUEUE_NAME, Allocation, AllocationStatus, Queue
from resources.selectors import allocation_node_name

pytestmark = pytest.mark.django_db


def make_jobs(team, count, **spec):
    spec = {"name": "j", "command": ["true"], "cpu_millis": 1000, "memory_mb": 100, **spec}
    spec.setdefault("queue", Queue.objects.get(name=DEFAULT_QUEUE_NAME))
    return Job.objects.bulk_create([Job(team=team, **spec) for _ in range(count)])


def test_it_fills_nodes_up_to_capacity_and_leaves_the_rest_waiting(team, broker):
    small = Node.objects.create(name="small", cpu_millis=2000, memory_mb=4096)
    large = Node.objects.create(name="large", cpu_millis=3000, memory_mb=4096)
    make_jobs(team, 7)
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


def test_it_places_higher_priority_first(team, broker):
    Node.objects.create(name="one", cpu_millis=1000, memory_mb=4096)
    low = make_jobs(team, 1, priority=0)[0]
    high = make_jobs(team, 1, priority=5)[0]
    place_pending_jobs(batch_size=10)
    assert Job.objects.get(pk=high.pk).status == JobStatus.RESERVED
    assert Job.objects.get(pk=low.pk).status == JobStatus.PENDING


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


def test_it_skips_cordoned_nodes(team, broker):
    Node.objects.create(
        name="cordoned", cpu_millis=4000, memory_mb=4096, status=NodeStatus.CORDONED
    )
    job = make_jobs(team, 1)[0]
    place_pending_jobs(batch_size=10)
    job.refresh_from_db()
    assert job.pending_reason == PendingReason.INSUFFICIENT_CAPACITY


@pytest.mark.parametrize("jobs", [10, 200])
def test_a_cycle_issues_the_same_number_of_queries_whatever_the_size(
    team, broker, jobs, django_assert_num_queries
):
    for i in range(20):
        Node.objects.create(name=f"n{i}", cpu_millis=64000, memory_mb=65536)
    make_jobs(team, jobs)
    make_jobs(team, 3, node_selector={"zone": "nowhere"})
    # savepoint, jobs, nodes, executions, allocations, jobs update, nodes update,
    # waiting jobs update, release savepoint
    with django_assert_num_queries(9):
        result = place_pending_jobs(batch_size=1000)
    assert result.placed == jobs


def test_the_router_sends_an_execution_to_its_nodes_queue(team, broker):
    from resources.routing import route_task

    Node.objects.create(name="gpu-01", cpu_millis=1000, memory_mb=4096)
    make_jobs(team, 1)
    token = place_pending_jobs(batch_size=1).tokens[0]
    assert allocation_node_name(token=token) == "gpu-01"
    assert route_task("jobs.run_execution", (), {"token": token}, {}) == {"queue": "node.gpu-01"}
    Allocation.objects.update(status=AllocationStatus.RELEASED, released_at="2026-01-01T00:00Z")
    assert route_task("jobs.run_execution", (), {"token": token}, {}) == {"queue": "control"}
    assert route_task("jobs.republish_stale_executions", (), {}, {}) == {"queue": "control"}
