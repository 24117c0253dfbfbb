"""GET /api/jobs/{id}/why/: the reason a job waits, its place in its queue, its queue's
quota, and the nodes grouped by what they lack."""

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import Role, User
from accounts.services import team_add_member
from jobs.models import ConcurrencyLimit, Job, JobDependency, JobExecution, JobStatus, PendingReason
from jobs.scheduling.cycle import place_pending_jobs
from jobs.services.executions import execution_claim
from jobs.services.retries import JOB_LIFECYCLE_FIELDS, job_plan_retry
from nodes.models import Node, NodeStatus
from resources.models import Queue
from tests.conftest import token_client

pytestmark = pytest.mark.django_db


def make_job(team, queue, name="work", **fields):
    spec = {"command": ["true"], "cpu_millis": 1000, "memory_mb": 100, **fields}
    return Job.objects.create(team=team, queue=queue, name=name, **spec)


def why(api, job):
    response = api.get(f"/api/jobs/{job.pk}/why/")
    assert response.status_code == 200, response.content
    return response.json()


def test_it_groups_nodes_by_what_they_lack(api, team, default_queue):
    Node.objects.create(name="node-small", cpu_millis=1000, memory_mb=4096, labels={"zone": "a"})
    Node.objects.create(
        name="node-busy",
        cpu_millis=4000,
        memory_mb=4096,
        allocated_cpu_millis=3500,
        labels={"zone": "a"},
    )
    Node.objects.create(
        name="node-cordoned",
        cpu_millis=8000,
        memory_mb=8192,
        labels={"zone": "a"},
        status=NodeStatus.CORDONED,
    )
    Node.objects.create(name="node-b", cpu_millis=8000, memory_mb=8192, labels={"zone": "b"})
    Node.objects.create(
        name="node-gone", cpu_millis=8000, memory_mb=8192, status=NodeStatus.OFFLINE
    )
    job = make_job(team, default_queue, cpu_millis=2000, memory_mb=512, node_selector={"zone": "a"})
    place_pending_jobs(batch_size=10)

    body = why(api, job)

    assert body["pending"] is True
    assert body["reason"] == PendingReason.INSUFFICIENT_CAPACITY
    assert body["nodes"] == [
        {"verdict": "short", "detail": "needs 2 CPU, 0.5 free", "nodes": ["node-busy"], "count": 1},
        {
            "verdict": "short",
            "detail": "needs 2 CPU, has 1 in all",
            "nodes": ["node-small"],
            "count": 1,
        },
        {"verdict": "selector", "detail": "lacks label zone=a", "nodes": ["node-b"], "count": 1},
        {"verdict": "not_ready", "detail": "cordoned", "nodes": ["node-cordoned"], "count": 1},
        {"verdict": "not_ready", "detail": "offline", "nodes": ["node-gone"], "count": 1},
    ]
    assert body["summary"].startswith(
        "No node can take the job now (2 short of capacity, 1 without the selected labels, "
        "2 not ready)."
    )
    assert body["queue"]["position"] == 1 and body["queue"]["exceeds_quota"] is False


def test_it_names_at_most_twenty_nodes_of_a_group(api, team, default_queue):
    Node.objects.bulk_create(
        Node(name=f"full-{i:02}", cpu_millis=1000, memory_mb=1024, allocated_cpu_millis=1000)
        for i in range(25)
    )
    job = make_job(team, default_queue)

    [group] = why(api, job)["nodes"]

    assert group["detail"] == "needs 1 CPU, 0 free"
    assert group["count"] == 25
    assert group["nodes"] == [f"full-{i:02}" for i in range(20)]


def test_it_says_when_the_queue_is_at_its_quota(api, team):
    Node.objects.create(name="roomy", cpu_millis=8000, memory_mb=8192)
    queue = Queue.objects.create(name="capped", quota_cpu_millis=2000)
    queue.teams.add(team)
    make_job(team, queue, name="holder", cpu_millis=2000)
    place_pending_jobs(batch_size=10)
    waiting = make_job(team, queue, name="waiter", cpu_millis=1000)
    place_pending_jobs(batch_size=10)

    body = why(api, waiting)

    assert body["reason"] == PendingReason.QUEUE_QUOTA
    assert body["queue"] == {
        "name": "capped",
        "position": 1,
        "pending": 1,
        "team_pending": 1,
        "teams": 1,
        "team_weight": 1,
        "team_past_share": 0,
        "weight": 1,
        "priority": 0,
        "quota": {"cpu": 2.0, "memory_mb": None, "gpu": None},
        "allocated": {"cpu": 2.0, "memory_mb": 100, "gpu": 0},
        "exceeds_quota": True,
    }
    assert "capped is at its quota" in body["summary"]
    assert body["nodes"] == [
        {"verdict": "fits", "detail": "has room now", "nodes": ["roomy"], "count": 1}
    ]


def test_it_shows_when_and_why_a_retry_is_due(api, team, default_queue, small_node):
    job = make_job(team, default_queue, attempts=1)
    retry = job_plan_retry(job=job, reason="exit code 3", delay_seconds=600, now=timezone.now())
    job.save(update_fields=JOB_LIFECYCLE_FIELDS)

    body = why(api, job)

    assert body["reason"] == PendingReason.WAITING_RETRY
    assert body["retry"] == {
        "attempt": 2,
        "reason": "exit code 3",
        "due_at": retry.due_at.isoformat().replace("+00:00", "Z"),
    }
    assert body["not_before"] == body["retry"]["due_at"]
    assert body["summary"].startswith("The job waits to retry (attempt 2 after exit code 3) at ")
    assert body["queue"]["position"] is None  # not due yet


def test_a_job_waiting_for_its_start_time_says_so(api, team, default_queue, small_node):
    job = make_job(team, default_queue, not_before=timezone.now() + timedelta(hours=1))

    body = why(api, job)

    assert body["reason"] == "waiting_not_before"
    assert body["summary"].startswith("The job waits for its start time")


def test_a_running_job_is_not_pending(api, team, default_queue, small_node):
    job = make_job(team, default_queue)
    place_pending_jobs(batch_size=10)
    execution_claim(token=JobExecution.objects.get(job=job).token, node_id=small_node.pk)

    assert why(api, job) == {
        "job": job.pk,
        "status": JobStatus.RUNNING,
        "pending": False,
        "summary": "The job is running on static-1.",
    }


def test_queue_position_follows_priority_then_age_within_the_team(
    api, team, other_team, default_queue
):
    other = Queue.objects.create(name="other", all_teams=True)
    # Another team's job in the queue: teams take turns by what they hold, so it is not
    # ahead of this team's in any fixed order, and is counted apart.
    make_job(other_team, default_queue, name="red", priority=9)
    first = make_job(team, default_queue, name="first")
    urgent = make_job(team, default_queue, name="urgent", priority=5)
    second = make_job(team, default_queue, name="second")
    make_job(
        team,
        default_queue,
        name="later",
        priority=9,
        not_before=timezone.now() + timedelta(hours=1),
    )
    make_job(team, other, name="elsewhere", priority=9)

    positions = {job.name: why(api, job)["queue"]["position"] for job in (first, urgent, second)}

    assert positions == {"urgent": 1, "first": 2, "second": 3}
    body = why(api, second)
    assert (body["queue"]["pending"], body["queue"]["team_pending"]) == (4, 3)
    assert body["queue"]["teams"] == 2
    assert body["summary"].endswith(
        "It is number 3 of 3 of its team's in queue default, where 1 other team waits too: "
        "the team holding the least of the queue for its weight goes first."
    )
    assert why(api, second)["reason"] == "waiting_scheduler"


@pytest.mark.parametrize("nodes", [3, 30])
def test_it_costs_the_same_queries_for_any_cluster(
    nodes, api, team, default_queue, django_assert_num_queries
):
    Node.objects.bulk_create(
        Node(name=f"n-{i:02}", cpu_millis=1000, memory_mb=1024, labels={"zone": str(i % 4)})
        for i in range(nodes)
    )
    job = make_job(team, default_queue, node_selector={"zone": "1"}, cpu_millis=500)
    job_plan_retry(job=job, reason="node lost", delay_seconds=0, now=timezone.now())
    job.save(update_fields=JOB_LIFECYCLE_FIELDS)

    # The token, its last use and the caller's teams; the job and its retries; the
    # queue's position count and usage; its dependencies; the nodes.
    with django_assert_num_queries(9):
        why(api, job)


def test_another_teams_job_is_not_found(outsider_api, team, default_queue, small_node):
    job = make_job(team, default_queue)
    assert outsider_api.get(f"/api/jobs/{job.pk}/why/").status_code == 404


def test_a_viewer_may_read_it(team, default_queue, small_node):
    viewer = User.objects.create_user("vic", password="correct horse battery")
    team_add_member(team=team, user=viewer, role=Role.VIEWER)
    job = make_job(team, default_queue)
    assert token_client(viewer).get(f"/api/jobs/{job.pk}/why/").status_code == 200


def test_it_lists_the_unmet_dependencies_and_the_deadline(api, team, default_queue, small_node):
    done = make_job(team, default_queue, name="done", status=JobStatus.SUCCEEDED)
    running = make_job(team, default_queue, name="still-running", status=JobStatus.RUNNING)
    deadline = timezone.now() + timedelta(hours=2)
    job = make_job(
        team,
        default_queue,
        pending_reason=PendingReason.WAITING_DEPENDENCIES,
        deadline=deadline,
    )
    JobDependency.objects.create(job=job, upstream=done, on="succeeded")
    JobDependency.objects.create(job=job, upstream=running, on="finished")

    body = why(api, job)

    dependencies, deadline_item = body["waits_on"]
    assert dependencies == {
        "kind": "dependencies",
        "count": 2,
        "unmet": 1,
        "jobs": [
            {"job": running.pk, "name": "still-running", "status": "running", "on": "finished"}
        ],
        "summary": "1 of its 2 dependencies not met yet.",
    }
    assert deadline_item["kind"] == "deadline"
    assert deadline_item["summary"] == f"Cancelled if not ended by {deadline.isoformat()}."


def test_it_lists_the_concurrency_limit_it_waits_for(api, team, default_queue, small_node):
    ConcurrencyLimit.objects.create(team=team, key="db", max_running=1)
    make_job(team, default_queue, name="holder", concurrency_key="db", status=JobStatus.RUNNING)
    job = make_job(
        team, default_queue, concurrency_key="db", pending_reason=PendingReason.CONCURRENCY_LIMIT
    )

    (item,) = why(api, job)["waits_on"]

    assert item["kind"] == "concurrency_limit"
    assert item["key"] == "db"
    assert "allows 1 at once and 1 of its jobs hold a slot" in item["summary"]


def test_a_retry_not_due_yet_is_listed_with_its_time(api, team, default_queue, small_node):
    job = make_job(team, default_queue, attempts=1)
    retry = job_plan_retry(job=job, reason="exit code 1", delay_seconds=600, now=timezone.now())
    job.save(update_fields=JOB_LIFECYCLE_FIELDS)

    (item,) = why(api, job)["waits_on"]

    assert item["kind"] == "retry_time"
    assert item["at"] == retry.due_at.isoformat().replace("+00:00", "Z")


def test_an_array_task_waiting_for_a_slot_names_its_arrays_parallelism(api, small_node):
    response = api.post(
        "/api/jobs/",
        {"name": "fan", "command": ["true"], "array": {"count": 3, "parallelism": 1}},
        format="json",
    )
    assert response.status_code == 201, response.json()
    array = response.json()["id"]
    held = Job.objects.filter(
        array_parent_id=array, pending_reason=PendingReason.WAITING_ARRAY_SLOT
    ).first()

    (item,) = why(api, held)["waits_on"]

    assert item == {
        "kind": "array_slot",
        "array": array,
        "parallelism": 1,
        "active": 0,
        "summary": f"Array job {array} runs at most 1 tasks at once; 0 run now.",
    }


def test_a_reserved_job_says_when_it_is_expected_to_start_and_a_held_one_whom_it_would_delay(
    api, team, default_queue
):
    node = Node.objects.create(name="node-a", cpu_millis=2000, memory_mb=4096)
    make_job(team, default_queue, name="running", timeout_seconds=30)
    (token,) = place_pending_jobs(batch_size=10).tokens
    execution = execution_claim(token=token, node_id=node.id)
    big = make_job(team, default_queue, name="big", cpu_millis=2000, timeout_seconds=60)
    held = make_job(team, default_queue, name="long", timeout_seconds=100)
    place_pending_jobs(batch_size=10)
    start = JobExecution.objects.get(pk=execution.pk).started_at + timedelta(seconds=30)
    words = f"reserved: expected start {start.isoformat(timespec='seconds')} on node node-a"

    answer = why(api, big)
    assert answer["reason"] == "reservation"
    assert answer["summary"].startswith(f"The job is {words}.")
    (item,) = answer["waits_on"]
    assert item["kind"] == "reservation"
    assert (item["job"], item["node"]) == (big.pk, "node-a")
    assert item["expected_start"] == start.isoformat().replace("+00:00", "Z")

    answer = why(api, held)
    assert answer["reason"] == "would_delay_reservation"
    assert answer["summary"].startswith(f"Held back: it would delay job {big.pk} ({words}).")
    (item,) = answer["waits_on"]
    assert item["kind"] == "would_delay"
    assert item["job"] == big.pk
