"""A node agent places the next waiting job on the room a success frees itself, without
the scheduler, and stops doing so when it is told to shut down."""

import itertools
import signal
import time

import pytest

from jobs.models import Job, JobExecution, JobStatus, PendingReason
from nodes.models import Node
from tests.processes import wait_until

pytestmark = pytest.mark.e2e

BACKLOG = 12


def submit_backlog(api, count, seconds):
    ids = []
    for _ in range(count):
        response = api.post(
            "/api/jobs/",
            {"name": "step", "command": ["sleep", str(seconds)], "resources": {"cpu": 1}},
            format="json",
        )
        assert response.status_code == 201, response.json()
        ids.append(response.json()["id"])
    return ids


def waiting_for_room(ids) -> int:
    return Job.objects.filter(
        pk__in=ids, status=JobStatus.PENDING, pending_reason=PendingReason.INSUFFICIENT_CAPACITY
    ).count()


def not_yet_seen(ids) -> int:
    return Job.objects.filter(
        pk__in=ids, status=JobStatus.PENDING, pending_reason=PendingReason.NONE
    ).count()


def test_a_backlog_drains_through_freed_room_with_the_scheduler_gone(cluster, api):
    cluster.start_node("node-a", cpu=1, slots=2)
    scheduler = cluster.start_scheduler()
    ids = submit_backlog(api, BACKLOG, 0.3)
    # The scheduler placed the first job and told the others why they wait ...
    wait_until(lambda: not_yet_seen(ids) == 0, 15, message="the backlog told why it waits")
    # ... and then it is gone, with most of the backlog still waiting.
    scheduler.kill()
    assert waiting_for_room(ids) >= BACKLOG - 3

    wait_until(
        lambda: Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).count() == BACKLOG,
        30,
        message="the backlog to drain through node-a's own finishes",
    )
    # One after another on the one CPU: each started after the one before it ended.
    executions = list(JobExecution.objects.filter(job_id__in=ids).order_by("started_at"))
    assert len(executions) == BACKLOG
    for before, after in itertools.pairwise(executions):
        assert after.started_at >= before.finished_at
    node = Node.objects.get(name="node-a")
    assert (node.allocated_cpu_millis, node.allocated_memory_mb) == (0, 0)


def test_an_agent_told_to_stop_finishes_its_job_and_takes_no_more(cluster, api):
    agent = cluster.start_node("node-a", cpu=1, slots=2)
    cluster.start_scheduler()
    ids = submit_backlog(api, BACKLOG, 0.5)
    wait_until(
        lambda: Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).count() >= 2,
        30,
        message="a couple of jobs done",
    )
    # To the agent alone, as its systemd unit does (KillMode=mixed): a signal to its whole
    # group would also reach a job in the instant it is being started, before it leaves
    # for a group of its own, and that job would end killed by it.
    agent.popen.send_signal(signal.SIGTERM)
    stopping = time.monotonic()
    agent.popen.wait(timeout=15)
    # A warm shutdown: the running job is let finish (half a second), nothing after it.
    assert time.monotonic() - stopping < 3, agent.log()[-3000:]
    done = Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).count()
    assert done < BACKLOG
    assert not Job.objects.filter(pk__in=ids, status=JobStatus.RUNNING).exists()

    # What it did not take is still there for the next agent of the node.
    cluster.start_node("node-a", cpu=1, slots=2)
    wait_until(
        lambda: Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).count() == BACKLOG,
        60,
        message="the rest of the backlog on the restarted agent",
    )
