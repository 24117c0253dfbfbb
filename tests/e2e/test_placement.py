"""Jobs flow through a real scheduler and real node agents without oversubscription."""

import itertools

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
    assert len(body["results"]) == 30 and body["next"] is None
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


def submit(api, **payload) -> int:
    response = api.post(
        "/api/jobs/", {"command": ["sh", "-c", "sleep 0.3"], **payload}, format="json"
    )
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def test_gpu_jobs_run_only_where_a_gpu_is_free_and_zone_b_jobs_only_in_zone_b(cluster, api):
    cluster.start_node("cpu-a", cpu=2, memory_mb=2048, labels={"zone": "a"})
    cluster.start_node("gpu-b", cpu=2, memory_mb=2048, gpu=1, labels={"zone": "b"})
    cluster.start_node("cpu-b", cpu=2, memory_mb=2048, labels={"zone": "b"})
    cluster.start_scheduler()
    sampler = AccountingSampler()
    sampler.start()
    try:
        gpu_jobs = [
            submit(api, name=f"gpu-{i}", resources={"cpu": 0.5, "memory_mb": 64, "gpu": 1})
            for i in range(4)
        ]
        zone_b = [
            submit(
                api,
                name=f"b-{i}",
                resources={"cpu": 1, "memory_mb": 64},
                node_selector={"zone": "b"},
            )
            for i in range(6)
        ]
        anywhere = [submit(api, name=f"any-{i}", resources={"cpu": 1}) for i in range(4)]
        nowhere = submit(api, name="zone-c", node_selector={"zone": "c"})
        everything = gpu_jobs + zone_b + anywhere
        wait_until(
            lambda: (
                Job.objects.filter(id__in=everything, status=JobStatus.SUCCEEDED).count()
                == len(everything)
            ),
            timeout=90,
            message="the jobs to succeed",
        )
    finally:
        sampler.stop()

    assert sampler.violations == []
    nodes = dict(
        JobExecution.objects.filter(job_id__in=everything).values_list("job_id", "node__name")
    )
    assert {nodes[j] for j in gpu_jobs} == {"gpu-b"}
    assert {nodes[j] for j in zone_b} <= {"gpu-b", "cpu-b"}
    # One GPU: the GPU jobs ran one after another, never two at once.
    runs = sorted(
        JobExecution.objects.filter(job_id__in=gpu_jobs).values_list("started_at", "finished_at")
    )
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(runs))
    # The job no node could match waits, and says why.
    body = api.get(f"/api/jobs/{nowhere}/").json()
    assert (body["status"], body["pending_reason"]) == ("pending", "node_selector")


def test_a_drained_node_finishes_its_work_takes_no_more_and_ends_cordoned(cluster, api, staff_api):
    cluster.start_node("node-a", cpu=1, memory_mb=1024)
    cluster.start_scheduler()
    long_job = submit(api, name="long", command=["sh", "-c", "sleep 2"], resources={"cpu": 1})
    wait_until(
        lambda: Job.objects.get(pk=long_job).status == JobStatus.RUNNING, 20, message="it to run"
    )
    assert staff_api.post("/api/nodes/node-a/drain/").json()["status"] == "draining"
    cluster.start_node("node-b", cpu=1, memory_mb=1024)
    later = submit(api, name="later", resources={"cpu": 0.5})
    wait_until(lambda: Job.objects.get(pk=later).status == JobStatus.SUCCEEDED, 30, message="later")
    assert JobExecution.objects.get(job_id=later).node.name == "node-b"
    wait_until(
        lambda: Job.objects.get(pk=long_job).status == JobStatus.SUCCEEDED, 30, message="long"
    )
    wait_until(
        lambda: api.get("/api/nodes/node-a/").json()["status"] == "cordoned",
        10,
        message="node-a to be cordoned once empty",
    )
    assert staff_api.post("/api/nodes/node-a/uncordon/").json()["status"] == "ready"
