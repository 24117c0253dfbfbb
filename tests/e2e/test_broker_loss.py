"""Redis is disposable: losing every message loses no job."""

import threading

import pytest
from django.db.models import Count, Q

from jobs.models import ExecutionStatus, Job, JobStatus
from tests.processes import restart_redis, wait_until

pytestmark = pytest.mark.e2e

BURST = 200


def when_messages_wait(broker, fault):
    """The fault, as soon as placed messages are waiting in the nodes' queues: so that it
    always costs messages, whatever the timing."""

    def run():
        wait_until(
            lambda: broker.llen("node.node-a") + broker.llen("node.node-b") > 0,
            20,
            interval=0.005,
            message="messages waiting in the broker",
        )
        fault()

    return run


def run_burst(cluster, api, broker, fault):
    cluster.start_maintenance()
    # Fewer slots than placements: up to 6 messages per node wait in Redis to be lost.
    cluster.start_node("node-a", cpu=2, slots=2)
    cluster.start_node("node-b", cpu=2, slots=2)
    cluster.start_scheduler()
    ids = []
    for i in range(BURST):
        if i == BURST // 3:
            # While submissions keep coming.
            threading.Thread(target=when_messages_wait(broker, fault)).start()
        response = api.post(
            "/api/jobs/",
            {
                "name": f"burst-{i}",
                "command": ["sleep", "0.05"],
                "resources": {"cpu": 0.25, "memory_mb": 16},
            },
            format="json",
        )
        assert response.status_code == 201, response.content
        ids.append(response.json()["id"])
    wait_until(
        lambda: Job.objects.filter(id__in=ids, status=JobStatus.SUCCEEDED).count() == BURST,
        120,
        interval=0.5,
        message=f"all {BURST} jobs to succeed",
    )
    per_job = Job.objects.filter(id__in=ids).annotate(
        successes=Count("executions", filter=Q(executions__status=ExecutionStatus.SUCCEEDED)),
        runs=Count("executions"),
    )
    assert {(j.successes, j.runs) for j in per_job} == {(1, 1)}
    # The fault did cost messages, and reconciliation (the scheduler leader's or beat's on
    # the control worker, whichever came first) is what brought them back.
    logs = "".join(p.log() for p in cluster.processes if p.name in ("control", "scheduler"))
    assert "unclaimed executions: job-" in logs
    # Every process rode out the fault (a dead agent would also show as a second run).
    assert [p.name for p in cluster.processes if not p.alive] == []


def test_a_flushed_broker_mid_burst_loses_no_job(cluster, api, broker):
    # FLUSHDB of the broker's database: every queued message and binding is gone. (It
    # is FLUSHALL for the broker, without touching other databases on the same Redis.)
    run_burst(cluster, api, broker, fault=broker.flushdb)


def test_a_restarted_broker_mid_burst_loses_no_job(cluster, api, broker):
    run_burst(cluster, api, broker, fault=restart_redis)
