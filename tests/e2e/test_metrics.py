"""/metrics while a real scheduler and two real node agents work through a backlog: each
scrape agrees with the rows it reads, taken in the same snapshot; counters only grow;
and the scheduler's and an agent's own metrics ports answer."""

import sys
import time
import urllib.request
from collections import defaultdict

import pytest
from django.db import connection, transaction
from django.db.models import Count, Sum
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from jobs.models import ExecutionStatus, Job, JobExecution, JobStatus
from nodes.models import Node
from resources.models import LIVE_ALLOCATION_STATUSES, Allocation
from tests.processes import free_port

pytestmark = pytest.mark.e2e

MB = 1024 * 1024
BUSY_JOBS, FAILING_JOBS = 24, 4
# Spends 0.3 s of CPU, then sleeps: the agents have something to measure.
BUSY = [
    sys.executable,
    "-c",
    "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    "time.sleep(0.5)",
]


def parse(text: str) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def by(values: dict, name: str, *labels: str) -> dict:
    """{label values: value} of one metric, summed over the labels not asked for."""
    out: dict = defaultdict(float)
    for (sample, pairs), value in values.items():
        if sample == name:
            out[tuple(dict(pairs)[label] for label in labels)] += value
    return dict(out)


def rows_now() -> dict:
    """What the database says, for the figures checked against it."""
    pending = (
        Job.objects.filter(status=JobStatus.PENDING)
        .values_list("queue__name", "pending_reason")
        .annotate(Count("id"))
    )
    allocated = (
        Allocation.objects.filter(status__in=LIVE_ALLOCATION_STATUSES)
        .values_list("node__name")
        .annotate(Sum("cpu_millis"), Sum("memory_mb"))
    )
    return {
        "pending": {(q, r or "waiting_scheduler"): n for q, r, n in pending},
        "allocated": {node: (cpu / 1000, memory * MB) for node, cpu, memory in allocated},
        "counters": {
            n.name: (n.allocated_cpu_millis / 1000, n.allocated_memory_mb * MB)
            for n in Node.objects.all()
        },
        "started": JobExecution.objects.filter(started_at__isnull=False)
        .values("job")
        .distinct()
        .count(),
        "running": Job.objects.filter(status=JobStatus.RUNNING).count(),
        "ended": dict(
            JobExecution.objects.filter(status__in=["succeeded", "failed", "cancelled", "lost"])
            .values_list("status")
            .annotate(Count("id"))
        ),
    }


def snapshot(client: Client) -> tuple[dict, dict]:
    """A scrape and the rows, read in one repeatable-read transaction: the same moment."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        response = client.get("/metrics")
        assert response.status_code == 200
        return parse(response.content.decode()), rows_now()


def check_against_rows(values: dict, rows: dict) -> None:
    pending = by(values, "scheduler_pending_jobs", "queue", "reason")
    assert {key: n for key, n in pending.items() if n} == rows["pending"]
    allocated = by(values, "scheduler_node_allocated", "node", "resource")
    for node, (cpu, memory) in rows["counters"].items():
        live = rows["allocated"].get(node, (0, 0))
        assert (allocated[node, "cpu"], allocated[node, "memory"]) == live == (cpu, memory)
    assert by(values, "scheduler_job_wait_seconds_count")[()] == rows["started"]
    assert by(values, "scheduler_jobs", "status")["running",] == rows["running"]
    finished = by(values, "scheduler_jobs_finished_total", "outcome")
    assert {o: n for (o,), n in finished.items() if n} == rows["ended"]


def fetch(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def growing(values: dict) -> dict:
    """The samples that must never go down: counters, and histograms' counts and sums."""
    return {
        key: value
        for key, value in values.items()
        if key[0].endswith(("_total", "_count", "_bucket"))
        and not key[0].startswith("scheduler_job_run_seconds_sum")
    }


def test_a_backlog_through_a_real_scheduler_and_two_nodes_as_metrics_tell_it(cluster, api):
    scheduler_port, agent_port = free_port(), free_port()
    cluster.start_node("node-a", cpu=2, memory_mb=2048, metrics_port=agent_port)
    cluster.start_node("node-b", cpu=1, memory_mb=2048)
    cluster.start_scheduler(metrics_port=scheduler_port)
    spec = {"resources": {"cpu": 0.5, "memory_mb": 64}}
    for i in range(BUSY_JOBS):
        response = api.post(
            "/api/jobs/", {**spec, "name": f"busy-{i}", "command": BUSY}, format="json"
        )
        assert response.status_code == 201, response.content
    for i in range(FAILING_JOBS):
        failing = {"command": ["sh", "-c", "exit 3"], "max_retries": 1, "retry_backoff_seconds": 1}
        response = api.post("/api/jobs/", {**spec, "name": f"fails-{i}", **failing}, format="json")
        assert response.status_code == 201, response.content

    client = Client()
    scrapes, waited, used = 0, 0.0, 0.0
    previous: dict = {}
    deadline = time.monotonic() + 120
    while True:
        values, rows = snapshot(client)
        check_against_rows(values, rows)
        grown = growing(values)
        assert [k for k, v in previous.items() if grown.get(k, 0) < v] == [], "a counter fell"
        previous = grown
        scrapes += 1
        waited = max(waited, sum(by(values, "scheduler_pending_jobs", "reason").values()))
        used = max(
            used,
            sum(
                v
                for (node, r), v in by(values, "scheduler_node_used", "node", "resource").items()
                if r == "cpu"
            ),
        )
        if not Job.objects.exclude(status__in=(JobStatus.SUCCEEDED, JobStatus.FAILED)).exists():
            break
        assert time.monotonic() < deadline, "the backlog did not drain in 120 s"
        time.sleep(0.2)

    values, rows = snapshot(client)
    check_against_rows(values, rows)
    assert scrapes >= 5
    assert waited > 0  # the backlog did wait, for room or for its retry
    assert used > 0  # the agents measured the busy jobs
    finished = by(values, "scheduler_jobs_finished_total", "outcome")
    assert (finished["succeeded",], finished["failed",]) == (BUSY_JOBS, 2 * FAILING_JOBS)
    assert by(values, "scheduler_job_wait_seconds_count")[()] == BUSY_JOBS + FAILING_JOBS
    assert by(values, "scheduler_retries_total")[()] == FAILING_JOBS
    assert by(values, "scheduler_dead_letter_jobs")[()] == FAILING_JOBS
    assert values["scheduler_placements_total", ()] == JobExecution.objects.count()
    assert values["scheduler_leader", ()] == 1
    assert by(values, "scheduler_node_up", "node") == {("node-a",): 1, ("node-b",): 1}

    scheduler = parse(fetch(scheduler_port))
    assert scheduler["scheduler_leader", ()] == 1
    assert scheduler["scheduler_cycle_duration_seconds_count", ()] >= 1
    agent = parse(fetch(agent_port))
    assert agent["scheduler_agent_heartbeats_total", ()] >= 1
    assert agent["scheduler_agent_running_executions", ()] == 0
    ran_on_a = JobExecution.objects.filter(node__name="node-a", status=ExecutionStatus.SUCCEEDED)
    assert ran_on_a.exists()
