"""Execution on a real node agent: duplicates, timeouts, retries, environment."""

import subprocess
import uuid

import pytest

from jobs.models import Job, JobExecution, JobStatus
from jobs.services import EXECUTION_TASK
from resources.models import AllocationStatus
from scheduler_site.celery import app as celery_app
from tests.processes import wait_until

pytestmark = pytest.mark.e2e


def submit(api, **payload):
    response = api.post("/api/jobs/", {"name": "t", **payload}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def wait_finished(job_id, timeout=30):
    return wait_until(
        lambda: (
            (job := Job.objects.get(pk=job_id)).status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
            and job
        ),
        timeout,
        message=f"job {job_id} to finish",
    )


def processes_matching(marker: str) -> list[str]:
    found = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


def test_the_same_execution_message_delivered_three_times_runs_once(cluster, api, tmp_path):
    cluster.start_node("node-a", cpu=2, slots=4)
    cluster.start_scheduler()
    marker = tmp_path / "runs.txt"
    job_id = submit(api, command=["sh", "-c", f"echo run >> {marker}; sleep 1"])
    execution = wait_until(
        lambda: JobExecution.objects.filter(job_id=job_id).first(), 10, message="placement"
    )
    # Two more copies, straight to the node's queue, while the first may be running.
    for _ in range(2):
        celery_app.send_task(EXECUTION_TASK, kwargs={"token": execution.token}, queue="node.node-a")
    job = wait_finished(job_id)
    assert job.status == JobStatus.SUCCEEDED
    # And one more after it finished: a stale token does nothing.
    celery_app.send_task(EXECUTION_TASK, kwargs={"token": execution.token}, queue="node.node-a")
    wait_until(lambda: "token=" + execution.token in cluster.processes[0].log(), 5)
    wait_until(
        lambda: (
            cluster.processes[0]
            .log()
            .count(f"dropped duplicate or stale execution message token={execution.token}")
            == 3
        ),
        10,
        message="three dropped duplicates",
    )
    assert marker.read_text() == "run\n"
    assert JobExecution.objects.filter(job_id=job_id).count() == 1


def test_a_job_past_its_timeout_fails_and_leaves_no_process(cluster, api):
    cluster.start_node("node-a", cpu=1)
    cluster.start_scheduler()
    marker = f"timeout-marker-{uuid.uuid4().hex[:8]}"
    # A child in the background and one in the foreground: both must go.
    job_id = submit(
        api,
        command=["sh", "-c", f"sh -c 'sleep 300; echo {marker}' & sleep 301 # {marker}"],
        timeout_seconds=1,
    )
    wait_until(lambda: processes_matching(marker), 15, message="the job to start")
    job = wait_finished(job_id)
    execution = job.last_execution
    assert job.status == JobStatus.FAILED
    assert execution.error == "timed out after 1 s"
    assert execution.allocation.status == AllocationStatus.RELEASED
    wait_until(lambda: not processes_matching(marker), 5, message="no process left behind")


def test_a_failing_job_is_retried_then_fails_with_every_attempt_recorded(cluster, api):
    cluster.start_node("node-a", cpu=1)
    cluster.start_scheduler()
    job_id = submit(
        api,
        command=["sh", "-c", "echo attempt $JOB_ATTEMPT; exit 2"],
        max_retries=2,
        retry_backoff_seconds=0,
    )
    job = wait_finished(job_id)
    assert job.status == JobStatus.FAILED
    assert job.attempts == 3
    attempts = list(JobExecution.objects.filter(job_id=job_id).order_by("attempt"))
    assert [(e.attempt, e.status, e.exit_code) for e in attempts] == [
        (1, "failed", 2),
        (2, "failed", 2),
        (3, "failed", 2),
    ]
    assert [e.log_tail for e in attempts] == ["attempt 1\n", "attempt 2\n", "attempt 3\n"]


def test_the_job_sees_its_environment_but_not_the_agents_secrets(cluster, api):
    cluster.start_node("node-a", cpu=2, memory_mb=512)
    cluster.start_scheduler()
    job_id = submit(
        api,
        command=["sh", "-c", "env | sort; pwd"],
        env={"GREETING": "hi there"},
        resources={"cpu": 1.5, "memory_mb": 300},
    )
    job = wait_finished(job_id)
    assert job.status == JobStatus.SUCCEEDED
    output = job.last_execution.log_tail
    for line in [
        "GREETING=hi there",
        f"JOB_ID={job_id}",
        "JOB_ATTEMPT=1",
        "NODE_NAME=node-a",
        "JOB_CPU_MILLIS=1500",
        "JOB_MEMORY_MB=300",
        "JOB_GPU=0",
    ]:
        assert line in output.splitlines()
    assert "DATABASE_URL" not in output
    assert "SECRET_KEY" not in output
    assert f"/node-a/job-{job_id}-attempt-1" in output
