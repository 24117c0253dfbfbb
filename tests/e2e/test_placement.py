"""Jobs flow through a real scheduler and real node agents without oversubscription."""

import pytest

from jobs.models import ExecutionStatus, Job, JobExecution, JobStatus
from resources.models import Allocation, AllocationStatus
from tests.accounting import AccountingSampler
from tests.processes import wait_until

pytestmark = pytest.mark.e2e


def test_thirty_jobs_on_two_nodes_all_succeed_without_oversubscription(cluster, api):
    cluster.start_node("node-small", cpu=2, memory_mb=4096)
    cluster.start_node("node-large", cpu=4, memory_mb=4096)
    cluster.start_scheduler()
    sampler = AccountingSampler()
    sampler.start()
    try:
        ids = []
        for i in range(30):
            response = api.post(
                "/api/jobs/",
                {
                    "name": f"sleeper-{i}",
                    "command": ["sh", "-c", "sleep 0.4"],
                    "resources": {"cpu": 1, "memory_mb": 64},
                },
                format="json",
            )
            assert response.status_code == 201, response.json()
            ids.append(response.json()["id"])
        wait_until(
            lambda: Job.objects.filter(id__in=ids, status=JobStatus.SUCCEEDED).count() == 30,
            timeout=60,
            message="30 jobs to succeed",
        )
    finally:
        sampler.stop()

    assert sampler.samples > 20
    assert sampler.violations == []
    # Both nodes did work, and the scheduler filled them, never past one job per CPU.
    assert sampler.max_running["node-small"] <= 2
    assert sampler.max_running["node-large"] <= 4
    per_node = {
        name: JobExecution.objects.filter(job_id__in=ids, node__name=name).count()
        for name in ("node-small", "node-large")
    }
    assert per_node["node-small"] >= 1 and per_node["node-large"] >= 1, per_node
    assert sum(per_node.values()) == 30  # one execution per job: none ran twice
    assert not Allocation.objects.exclude(status=AllocationStatus.RELEASED).exists()
    body = api.get("/api/jobs/", {"status": "succeeded", "page_size": 100}).json()
    assert body["count"] == 30
    assert {job["node"] for job in body["results"]} == {"node-small", "node-large"}
    assert all(job["exit_code"] == 0 and job["attempts"] == 1 for job in body["results"])


def test_failing_command_ends_failed_with_exit_code_and_output_tail(cluster, api):
    cluster.start_node("node-a", cpu=1, memory_mb=1024)
    cluster.start_scheduler()
    response = api.post(
        "/api/jobs/",
        {"name": "breaks", "command": ["sh", "-c", "echo starting; echo broken pipe >&2; exit 7"]},
        format="json",
    )
    assert response.status_code == 201
    job_id = response.json()["id"]
    wait_until(
        lambda: Job.objects.get(pk=job_id).status in (JobStatus.SUCCEEDED, JobStatus.FAILED),
        timeout=30,
        message="the job to end",
    )
    body = api.get(f"/api/jobs/{job_id}/").json()
    assert body["status"] == "failed"
    assert body["exit_code"] == 7
    assert body["error"] == "exit code 7"
    assert body["output_tail"] == "starting\nbroken pipe\n"
    assert body["node"] == "node-a"
    assert body["started_at"] and body["finished_at"]
    execution = JobExecution.objects.get(job_id=job_id)
    assert execution.status == ExecutionStatus.FAILED
    assert execution.allocation.status == AllocationStatus.RELEASED
    node = execution.node
    node.refresh_from_db()
    assert (node.allocated_cpu_millis, node.allocated_memory_mb) == (0, 0)
    attempts = api.get(f"/api/jobs/{job_id}/executions/").json()
    assert [(a["attempt"], a["status"], a["exit_code"]) for a in attempts] == [(1, "failed", 7)]
