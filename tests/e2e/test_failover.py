"""Node agents die; the jobs they ran finish elsewhere, once."""

import subprocess
import time

import pytest

from jobs.models import ExecutionStatus, Job, JobExecution, JobRetry, JobStatus
from jobs.scheduling.cycle import place_pending_jobs
from jobs.services.executions import execution_claim
from nodes.models import Node, NodeStatus
from resources.models import AllocationStatus
from tests.e2e.survivor import submit_survivor
from tests.processes import wait_until

pytestmark = pytest.mark.e2e


def job_status(job_id):
    return Job.objects.get(pk=job_id).status


def test_killed_node_job_runs_elsewhere_and_nothing_runs_twice(cluster, api, tmp_path):
    marker = tmp_path / "runs.txt"
    cluster.start_maintenance()
    node_a = cluster.start_node("node-a", cpu=1)
    cluster.start_scheduler()
    job_id = submit_survivor(api, marker)
    wait_until(
        lambda: marker.exists() and "start-node-a" in marker.read_text(),
        20,
        message="the job to start on node-a",
    )
    cluster.start_node("node-b", cpu=1)

    node_a.kill()  # SIGKILL: no clean-up, no goodbye

    wait_until(
        lambda: job_status(job_id) == JobStatus.SUCCEEDED,
        40,
        message="the job to succeed elsewhere",
    )
    job = Job.objects.get(pk=job_id)
    first, second = JobExecution.objects.filter(job_id=job_id).order_by("attempt")
    assert job.attempts == 2
    assert (first.node.name, first.status, first.error) == (
        "node-a",
        ExecutionStatus.LOST,
        "node lost",
    )
    assert (second.node.name, second.status) == ("node-b", ExecutionStatus.SUCCEEDED)
    assert first.allocation.status == AllocationStatus.RELEASED
    node = Node.objects.get(name="node-a")
    assert node.status == NodeStatus.OFFLINE
    assert (node.allocated_cpu_millis, node.allocated_memory_mb) == (0, 0)
    assert list(JobRetry.objects.filter(job_id=job_id).values_list("attempt", "reason")) == [
        (2, "node lost")
    ]
    # The process on the dead node died with its agent: it never finished its work.
    assert marker.read_text() == "start-node-a\nstart-node-b\nend-node-b\n"

    # The agent comes back: stale messages and leftovers do nothing.
    cluster.start_node("node-a", cpu=1)
    assert Node.objects.get(name="node-a").status == NodeStatus.READY
    time.sleep(3)
    assert marker.read_text() == "start-node-a\nstart-node-b\nend-node-b\n"
    assert JobExecution.objects.filter(job_id=job_id).count() == 2
    leftovers = subprocess.run(["pgrep", "-f", str(marker)], capture_output=True, text=True)
    assert leftovers.stdout == ""


def test_killed_node_job_runs_elsewhere_with_beat_stopped(cluster, api, tmp_path):
    """The scheduler leader handles node loss itself: no beat, no control worker."""
    marker = tmp_path / "runs.txt"
    cluster.start_node("node-a", cpu=1)
    cluster.start_node("node-b", cpu=1)
    cluster.start_scheduler()
    job_id = api.post(
        "/api/jobs/",
        {
            "name": "leaderless-maintenance",
            "command": [
                "sh",
                "-c",
                f"echo start-$NODE_NAME >> {marker}; sleep 2; echo end-$NODE_NAME >> {marker}",
            ],
        },
        format="json",
    ).json()["id"]
    wait_until(
        lambda: (
            JobExecution.objects.filter(job_id=job_id, status=ExecutionStatus.RUNNING)
            .values_list("node__name", flat=True)
            .first()
        ),
        20,
        message="the job to start",
    )
    first_node = JobExecution.objects.get(job_id=job_id).node.name
    other_node = "node-b" if first_node == "node-a" else "node-a"
    cluster.process(first_node).kill()

    wait_until(
        lambda: job_status(job_id) == JobStatus.SUCCEEDED,
        40,
        message="the job to succeed on the other node",
    )
    first, second = JobExecution.objects.filter(job_id=job_id).order_by("attempt")
    assert (first.node.name, first.status, first.error) == (
        first_node,
        ExecutionStatus.LOST,
        "node lost",
    )
    assert (second.node.name, second.status) == (other_node, ExecutionStatus.SUCCEEDED)
    assert Node.objects.get(name=first_node).status == NodeStatus.OFFLINE
    assert Node.objects.get(name=first_node).allocated_cpu_millis == 0
    assert [p.name for p in cluster.processes if p.name in ("beat", "control")] == []


def test_a_running_execution_its_node_does_not_report_is_failed_over(cluster, api):
    """The agent lives, but the execution's process is gone: its heartbeat says so."""
    cluster.start_node("node-a", cpu=1)
    job_id = api.post("/api/jobs/", {"name": "ghost", "command": ["true"]}, format="json").json()[
        "id"
    ]
    # Placed and claimed in the database, as if node-a had started it; node-a never
    # received the message (nothing was published), so no process exists for it.
    token = place_pending_jobs(batch_size=1).tokens[0]
    node_a = Node.objects.get(name="node-a")
    assert execution_claim(token=token, node_id=node_a.id) is not None
    cluster.start_maintenance()
    cluster.start_scheduler()
    wait_until(
        lambda: job_status(job_id) == JobStatus.SUCCEEDED,
        30,
        message="the job to be failed over and succeed",
    )
    first, second = JobExecution.objects.filter(job_id=job_id).order_by("attempt")
    assert (first.status, first.error) == (ExecutionStatus.LOST, "process vanished on node node-a")
    assert second.status == ExecutionStatus.SUCCEEDED
    assert Node.objects.get(name="node-a").allocated_cpu_millis == 0
