"""The broker is disposable: losing its messages, restarting it, or losing a node agent
mid-job loses no job, on Redis and on RabbitMQ alike."""

import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.db.models import Count, Q
from django.utils import timezone

from jobs.models import ExecutionStatus, Job, JobExecution, JobStatus
from nodes.models import Node, NodeStatus
from tests.e2e.survivor import submit_survivor
from tests.processes import restart_redis, wait_until
from tests.rabbitmq import purge_queues, queue_depth, restart_rabbitmq, vhost_queues_delete

pytestmark = pytest.mark.e2e

BURST = 200
NODE_QUEUES = ["node.node-a", "node.node-b"]


@dataclass
class Broker:
    name: str
    waiting: Callable[[str], int]  # messages ready in a queue
    lose_messages: Callable[[], None]  # every queued message is gone
    # Redis keeps nothing on disk: a restart costs every queued message. RabbitMQ's
    # durable queues keep their persistent messages.
    restart: Callable[[], None]


@pytest.fixture(params=["redis", "rabbitmq"])
def any_broker(request, cluster, broker):
    """The cluster's broker: the suite's Redis, or a RabbitMQ vhost (tests.rabbitmq)."""
    if request.param == "redis":
        return Broker(
            name="redis",
            waiting=broker.llen,
            # FLUSHDB of the broker's database: every queued message and binding is gone.
            # (It is FLUSHALL for the broker, without touching other databases on the
            # same Redis.)
            lose_messages=broker.flushdb,
            restart=restart_redis,
        )
    url = request.getfixturevalue("rabbitmq")
    vhost_queues_delete(url)  # what earlier tests of the session left
    cluster.use_broker(url)
    return Broker(
        name="rabbitmq",
        waiting=lambda queue: queue_depth(url, queue),
        lose_messages=lambda: purge_queues(url, NODE_QUEUES),
        restart=restart_rabbitmq,
    )


def when_messages_wait(cluster, any_broker, fault, done: threading.Event):
    """The fault, with placed messages waiting in the nodes' queues: so that it always
    costs messages (where the fault loses any), however fast the agents take them. The
    agents are paused (SIGSTOP, their own process only: running jobs go on) until
    messages wait, then resumed just before the fault. `done` is set once it happened."""

    def run():
        agents = [p.popen.pid for p in cluster.processes if p.name in ("node-a", "node-b")]
        for pid in agents:
            os.kill(pid, signal.SIGSTOP)
        try:
            wait_until(
                lambda: sum(any_broker.waiting(queue) for queue in NODE_QUEUES) > 0,
                20,
                interval=0.005,
                message="messages waiting in the broker",
            )
        finally:
            for pid in agents:
                os.kill(pid, signal.SIGCONT)
        fault()
        done.set()

    return run


def test_lost_messages_then_a_broker_restart_mid_burst_lose_no_job(cluster, api, any_broker):
    """200 jobs submitted one after the other; a third of the way through, every message
    waiting in the nodes' queues is lost, and two thirds of the way through the broker is
    restarted (on Redis, which keeps nothing on disk, that loses them again)."""
    cluster.start_maintenance()
    # Fewer slots than placements: up to 6 messages per node wait in the broker.
    cluster.start_node("node-a", cpu=2, slots=2)
    cluster.start_node("node-b", cpu=2, slots=2)
    cluster.start_scheduler()
    ids = []
    lost, restarted = threading.Event(), threading.Event()

    def fault_soon(fault, done):  # while submissions keep coming
        threading.Thread(target=when_messages_wait(cluster, any_broker, fault, done)).start()

    for i in range(BURST):
        if i == BURST // 3:
            fault_soon(any_broker.lose_messages, lost)
        elif i == 2 * BURST // 3:
            assert lost.wait(30), "the messages were not lost in time"
            fault_soon(any_broker.restart, restarted)
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
    assert lost.is_set() and restarted.is_set()
    per_job = Job.objects.filter(id__in=ids).annotate(
        successes=Count("executions", filter=Q(executions__status=ExecutionStatus.SUCCEEDED)),
        runs=Count("executions"),
    )
    assert {(j.successes, j.runs) for j in per_job} == {(1, 1)}
    # The faults did cost messages, and reconciliation (the scheduler leader's or beat's
    # on the control worker, whichever came first) is what brought them back.
    logs = "".join(p.log() for p in cluster.processes if p.name in ("control", "scheduler"))
    assert "unclaimed executions: job-" in logs
    # Every process rode out the faults (a dead agent would also show as a second run).
    assert [p.name for p in cluster.processes if not p.alive] == []


def test_a_node_killed_mid_job_loses_no_job(cluster, api, any_broker, tmp_path):
    marker = tmp_path / "runs.txt"
    cluster.start_maintenance()
    node_a = cluster.start_node("node-a", cpu=1)
    cluster.start_scheduler()
    job_id = submit_survivor(api, marker)
    # More for node-a, waiting in its queue (one slot) when its agent dies.
    queued = [
        api.post("/api/jobs/", {"name": f"queued-{i}", "command": ["true"]}, format="json").json()[
            "id"
        ]
        for i in range(2)
    ]
    wait_until(
        lambda: marker.exists() and "start-node-a" in marker.read_text(),
        20,
        message="the job to start on node-a",
    )
    cluster.start_node("node-b", cpu=1)

    node_a.kill()  # SIGKILL: no clean-up, no goodbye

    wait_until(
        lambda: (
            Job.objects.filter(id__in=[job_id, *queued], status=JobStatus.SUCCEEDED).count() == 3
        ),
        60,
        message="the jobs to succeed elsewhere",
    )
    first, second = JobExecution.objects.filter(job_id=job_id).order_by("attempt")
    assert (first.node.name, first.status, first.error) == (
        "node-a",
        ExecutionStatus.LOST,
        "node lost",
    )
    assert (second.node.name, second.status) == ("node-b", ExecutionStatus.SUCCEEDED)
    assert marker.read_text() == "start-node-a\nstart-node-b\nend-node-b\n"
    assert Node.objects.get(name="node-a").status == NodeStatus.OFFLINE


def test_a_job_placed_before_its_nodes_agent_started_waits_in_its_queue(cluster, api, rabbitmq):
    """RabbitMQ drops a message routed to a queue nobody declared: the scheduler declares
    the node's durable queue before publishing, so the first message is the one that runs
    (not a re-publish by reconciliation)."""
    vhost_queues_delete(rabbitmq)
    cluster.use_broker(rabbitmq)
    cluster.env["EXECUTION_DISPATCH_TIMEOUT_SECONDS"] = "300"
    cluster.env["NODE_LOST_AFTER_SECONDS"] = "300"
    Node.objects.create(
        name="node-a", cpu_millis=1000, memory_mb=4096, last_heartbeat=timezone.now()
    )
    cluster.start_scheduler()
    job_id = api.post("/api/jobs/", {"name": "early", "command": ["true"]}, format="json").json()[
        "id"
    ]
    wait_until(
        lambda: queue_depth(rabbitmq, "node.node-a") == 1, 20, message="the message in its queue"
    )
    cluster.start_node("node-a", cpu=1)
    wait_until(
        lambda: Job.objects.get(pk=job_id).status == JobStatus.SUCCEEDED,
        30,
        message="the job to succeed",
    )
    assert JobExecution.objects.get(job_id=job_id).republished_at is None
