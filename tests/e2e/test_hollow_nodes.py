"""Hollow nodes (`run_node --hollow N`): many simulated nodes in one process register,
heartbeat, claim and report through the agents' API like real ones, and run nothing."""

import time

import pytest
from django.conf import settings

from jobs.agent.hollow import NODES_PER_CONNECTION
from jobs.models import ExecutionStatus, Job, JobExecution, JobStatus
from nodes.models import Node, NodeStatus
from tests.jobs.making import make_jobs
from tests.processes import wait_until

pytestmark = pytest.mark.e2e

# More nodes than one broker connection consumes for: every connection must deliver.
NODES = 30
JOBS = 100


def submit(api, count: int, cpu: float = 1, **parameters) -> list[int]:
    ids = []
    for i in range(count):
        response = api.post(
            "/api/jobs/",
            {
                "name": f"hollow-{i}",
                "command": ["false"],  # never run: a hollow node spawns no process
                "parameters": parameters,
                "resources": {"cpu": cpu, "memory_mb": 16},
            },
            format="json",
        )
        assert response.status_code == 201, response.json()
        ids.append(response.json()["id"])
    return ids


def test_hollow_nodes_register_and_run_jobs_across_them(cluster, team):
    assert NODES > NODES_PER_CONNECTION
    cluster.start_scheduler()
    hollow = cluster.start_hollow_nodes("hollow", NODES, cpu=2)
    names = {f"hollow-{i}" for i in range(1, NODES + 1)}
    wait_until(
        lambda: (
            set(Node.objects.filter(status=NodeStatus.READY).values_list("name", flat=True))
            == names
        ),
        30,
        message="every hollow node ready",
    )
    first_heartbeats = dict(Node.objects.values_list("name", "last_heartbeat"))

    # 100 jobs waiting at once, each filling a node for a second: every node gets work.
    jobs = make_jobs(team, JOBS, cpu_millis=2000, memory_mb=16, parameters={"hollow_seconds": 1})
    ids = [job.id for job in jobs]
    wait_until(
        lambda: Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).count() == JOBS,
        120,
        message="every job to succeed on the hollow nodes",
    )
    executions = JobExecution.objects.filter(job_id__in=ids)
    assert executions.count() == JOBS  # one attempt each: none lost, none run twice
    used = set(executions.values_list("node__name", flat=True))
    assert used == names
    # Each "ran" for its hollow seconds between its start and its end.
    for started_at, finished_at in executions.values_list("started_at", "finished_at"):
        assert (finished_at - started_at).total_seconds() >= 1
    # The nodes heartbeat on their own, and give back every allocation.
    nodes = list(Node.objects.filter(name__in=names))
    assert all(n.last_heartbeat > first_heartbeats[n.name] for n in nodes)
    assert all(n.allocated_cpu_millis == n.allocated_memory_mb == 0 for n in nodes)
    assert all(n.agent_version.endswith("+hollow") for n in nodes)
    assert hollow.alive
    assert "Traceback" not in hollow.log()


def test_a_hollow_job_fails_on_a_bad_duration_and_ends_when_cancelled(cluster, api):
    cluster.start_scheduler()
    cluster.start_hollow_nodes("hollow", 2, cpu=1)
    [bad] = submit(api, 1, hollow_seconds="soon")
    [long] = submit(api, 1, hollow_seconds=600)
    wait_until(
        lambda: Job.objects.get(pk=bad).status == JobStatus.FAILED, 30, message="the bad job failed"
    )
    assert "hollow_seconds" in JobExecution.objects.get(job_id=bad).error
    wait_until(
        lambda: Job.objects.get(pk=long).status == JobStatus.RUNNING, 30, message="the long job"
    )
    assert api.post(f"/api/jobs/{long}/cancel/").status_code == 200
    # Within a third of the nodes' periodic check: the cancel's nudge on the node's stops
    # queue tells it at once.
    assert settings.NODE_CANCEL_POLL_SECONDS >= 30
    wait_until(
        lambda: Job.objects.get(pk=long).status == JobStatus.CANCELLED,
        10,
        message="the cancelled job to end",
    )
    assert JobExecution.objects.get(job_id=long).status == ExecutionStatus.CANCELLED


def test_hollow_nodes_are_refused_unless_allowed(cluster):
    process = cluster.start_hollow_nodes("hollow", 3, cpu=1, allowed=False, wait=False)
    process.popen.wait(timeout=60)
    assert process.popen.returncode != 0
    assert "HOLLOW_NODES_ALLOWED=true" in process.log()
    time.sleep(0.5)
    assert not Node.objects.exists()
