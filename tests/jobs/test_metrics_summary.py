"""`GET /api/metrics/summary/`: the figures of /metrics through the caller's teams."""

from datetime import timedelta

import pytest

from jobs.metrics.summary import metrics_summary
from jobs.models import ExecutionStatus, Job, JobExecution, JobStatus
from nodes.models import Node
from resources.models import Queue
from tests.jobs.metrics_world import build_world

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(team, default_queue, other_team):
    """The metrics world for team blue; team red has jobs in the default queue and in a
    queue of its own."""
    world = build_world(team, default_queue)
    red_q = Queue.objects.create(name="red-q")
    red_q.teams.add(other_team)
    for queue, status in ((default_queue, JobStatus.PENDING), (default_queue, JobStatus.PENDING)):
        Job.objects.create(
            team=other_team, queue=queue, name="red-mark", command=["true"], status=status
        )
    red_running = Job.objects.create(
        team=other_team, queue=red_q, name="red-mark", command=["true"], status="running"
    )
    JobExecution.objects.create(
        job=red_running,
        attempt=1,
        node=world.node,
        token=f"job-{red_running.pk}-attempt-1",
        status=ExecutionStatus.RUNNING,
        reserved_at=world.now,
        started_at=world.now,
    )
    # Ended two hours ago: outside the last hour.
    old = Job.objects.create(team=team, queue=default_queue, name="old", command=["true"])
    JobExecution.objects.create(
        job=old,
        attempt=1,
        node=world.node,
        token=f"job-{old.pk}-attempt-1",
        status=ExecutionStatus.FAILED,
        reserved_at=world.now - timedelta(hours=3),
        started_at=world.now - timedelta(hours=3),
        finished_at=world.now - timedelta(hours=2),
    )
    Job.objects.filter(pk=old.pk).update(
        status=JobStatus.FAILED, created_at=world.now - timedelta(hours=3)
    )
    return world


def by_queue(body) -> dict:
    return {queue["queue"]: queue for queue in body["queues"]}


def test_a_member_sees_the_queues_their_teams_use_and_only_their_teams_jobs(world, api):
    response = api.get("/api/metrics/summary/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert "red" not in response.content.decode()
    queues = by_queue(body)
    assert list(queues) == ["default", "gpu"]
    default, gpu = queues["default"], queues["gpu"]
    assert default["jobs"] == {"pending": 3, "reserved": 0, "running": 1}
    assert default["pending_reasons"] == {
        "waiting_scheduler": 1,
        "waiting_dependencies": 0,
        "waiting_retry": 1,
        "insufficient_capacity": 1,
        "queue_quota": 0,
        "unschedulable": 0,
        "node_selector": 0,
        "concurrency_limit": 0,
        "waiting_array_slot": 0,
        "reservation": 0,
        "would_delay_reservation": 0,
        "gang_does_not_fit": 0,
        "preempting": 0,
        "held": 0,
        "waiting_not_before": 0,
    }
    assert 100 <= default["oldest_pending_age_seconds"] < 130
    assert gpu["jobs"] == {"pending": 1, "reserved": 1, "running": 0}
    # The old failure, ended hours ago, is still in the dead-letter view.
    assert (default["dead_letter"], gpu["dead_letter"]) == (1, 1)
    # Waits of the jobs started in the hour: 100, 3, 3, 10 and 5 s; runs of the attempts
    # that ended in it: 1, 7, 1, 2 and 0.5 s (the old failure is outside the window).
    assert default["last_hour"] == {
        "started": 5,
        "wait_seconds": {"p50": 5.0, "p95": pytest.approx(82.0)},
        "finished": {"succeeded": 2, "failed": 2, "cancelled": 1, "lost": 0, "preempted": 0},
        "run_seconds": {"p50": 1.0, "p95": pytest.approx(6.0)},
        "failure_ratio": 0.5,
    }
    # A lost attempt that never started fails without a run time.
    assert gpu["last_hour"] == {
        "started": 1,
        "wait_seconds": {"p50": 1.0, "p95": 1.0},
        "finished": {"succeeded": 0, "failed": 1, "cancelled": 0, "lost": 1, "preempted": 0},
        "run_seconds": {"p50": 30.0, "p95": 30.0},
        "failure_ratio": 1.0,
    }


def test_a_member_of_another_team_sees_nothing_of_the_first_teams_queues_or_jobs(
    world, outsider_api
):
    response = outsider_api.get("/api/metrics/summary/")
    assert response.status_code == 200
    assert "job-mark" not in response.content.decode()
    queues = by_queue(response.json())
    assert list(queues) == ["default", "red-q"]
    assert queues["default"]["jobs"] == {"pending": 2, "reserved": 0, "running": 0}
    assert queues["default"]["dead_letter"] == 0
    assert queues["default"]["last_hour"]["finished"] == dict.fromkeys(
        ("succeeded", "failed", "cancelled", "lost", "preempted"), 0
    )
    assert queues["default"]["last_hour"]["wait_seconds"] == {"p50": None, "p95": None}
    assert queues["default"]["last_hour"]["failure_ratio"] is None
    assert queues["red-q"]["jobs"]["running"] == 1
    assert queues["red-q"]["last_hour"]["started"] == 1


def test_staff_see_every_queue_and_every_teams_jobs(world, staff_api):
    queues = by_queue(staff_api.get("/api/metrics/summary/").json())
    assert list(queues) == ["default", "gpu", "red-q"]
    assert queues["default"]["jobs"]["pending"] == 5


def test_everyone_sees_every_node_with_what_it_holds_and_uses(world, outsider_api):
    body = outsider_api.get("/api/metrics/summary/").json()
    nodes = {node["name"]: node for node in body["nodes"]}
    assert list(nodes) == ["n-off", "n-silent", "n-up"]
    assert nodes["n-up"] == {
        "name": "n-up",
        "status": "ready",
        "up": True,
        "capacity": {"cpu": 8.0, "memory_mb": 16384, "gpu": 1},
        "allocated": {"cpu": 3.0, "memory_mb": 1536, "gpu": 1},
        "used": {"cpu": 1.5, "memory_mb": 700},
    }
    assert (nodes["n-off"]["up"], nodes["n-off"]["used"]) == (
        False,
        {"cpu": None, "memory_mb": None},
    )
    assert nodes["n-silent"]["up"] is False
    # Totals over the nodes that are not offline.
    assert body["cluster"] == {
        "nodes": 3,
        "nodes_up": 1,
        "capacity": {"cpu": 10.0, "memory_mb": 18432, "gpu": 1},
        "allocated": {"cpu": 3.0, "memory_mb": 1536, "gpu": 1},
        "used": {"cpu": 1.5, "memory_mb": 700},
    }
    assert body["window_seconds"] == 3600


def test_anonymous_callers_are_refused(world, client):
    assert client.get("/api/metrics/summary/").status_code == 401


def test_the_summary_takes_the_same_statements_for_a_larger_cluster(
    world, member, staff, django_assert_num_queries
):
    with django_assert_num_queries(7):
        metrics_summary(user=member)
    with django_assert_num_queries(6):  # staff: no team filter to read
        metrics_summary(user=staff)
    for i in range(20):
        queue = Queue.objects.create(name=f"more-{i}", all_teams=True)
        Node.objects.create(name=f"more-{i}", cpu_millis=1000, memory_mb=1024)
        Job.objects.create(team=world.team, queue=queue, name="more", command=["true"])
    with django_assert_num_queries(7):
        body = metrics_summary(user=member)
    assert len(body["queues"]) == 22 and len(body["nodes"]) == 23
