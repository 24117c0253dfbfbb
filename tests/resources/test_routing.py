"""The Celery router: an execution's message goes to the queue of the node that holds its
live allocation; every other task, and an execution with none, goes to `control`."""

import pytest
from django.utils import timezone

from jobs.models import Job
from jobs.scheduling.cycle import place_pending_jobs
from nodes.models import Node
from resources.models import DEFAULT_QUEUE_NAME, Allocation, AllocationStatus, Queue
from resources.routing import route_task, routes_known
from resources.selectors import allocation_node_name

pytestmark = pytest.mark.django_db


def test_the_router_sends_an_execution_to_its_nodes_queue(team):
    Node.objects.create(name="gpu-01", cpu_millis=1000, memory_mb=4096)
    Job.objects.create(
        team=team, queue=Queue.objects.get(name=DEFAULT_QUEUE_NAME), name="j", command=["true"]
    )
    token = place_pending_jobs(batch_size=1).tokens[0]
    assert allocation_node_name(token=token) == "gpu-01"
    assert route_task("jobs.run_execution", (), {"token": token}, {}) == {"queue": "node.gpu-01"}
    # Released: whoever receives the message drops it as stale, so it goes to control.
    Allocation.objects.update(status=AllocationStatus.RELEASED, released_at=timezone.now())
    assert route_task("jobs.run_execution", (), {"token": token}, {}) == {"queue": "control"}
    assert route_task("jobs.republish_stale_executions", (), {}, {}) == {"queue": "control"}


def test_the_router_takes_nodes_the_cycle_knows_without_a_query(django_assert_num_queries):
    with routes_known({"job-1-attempt-1": "node-a"}), django_assert_num_queries(0):
        assert route_task("jobs.run_execution", (), {"token": "job-1-attempt-1"}, {}) == {
            "queue": "node.node-a"
        }
    # Outside the block, the database answers again: no such allocation here.
    with django_assert_num_queries(1):
        assert route_task("jobs.run_execution", (), {"token": "job-1-attempt-1"}, {}) == {
            "queue": "control"
        }
