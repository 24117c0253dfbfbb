"""Changing a pending job (Slurm's `scontrol update job`) with `PATCH /api/jobs/{id}/`:
what may change, what a change checks as a submission would, and what the scheduler
does with the job afterwards."""

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import Role, User
from accounts.services import team_add_member
from events.models import Event, EventType
from jobs.models import Job, JobStatus, PendingReason
from jobs.scheduling.cycle import place_pending_jobs
from nodes.models import Node
from resources.models import Queue
from tests.conftest import token_client
from tests.jobs.making import submit

pytestmark = pytest.mark.django_db


def stored(job_id: int, *fields: str) -> tuple:
    return Job.objects.filter(pk=job_id).values_list(*fields).get()


def changed_events(job_id: int) -> list[tuple[str, str, dict]]:
    events = Event.objects.filter(job_id=job_id, type=EventType.JOB_CHANGED).order_by("id")
    return [(e.message, e.actor, e.data) for e in events]


def test_a_job_too_large_for_its_nodes_made_smaller_is_placed_and_the_event_says_so(
    api, small_node, broker
):
    job_id = submit(api, resources={"cpu": 4, "memory_mb": 1024})
    Node.objects.filter(pk=small_node.pk).update(cpu_millis=2000)  # the node shrank
    place_pending_jobs(batch_size=10)
    assert stored(job_id, "status", "pending_reason") == (
        JobStatus.PENDING,
        PendingReason.INSUFFICIENT_CAPACITY,
    )

    response = api.patch(
        f"/api/jobs/{job_id}/", {"resources": {"cpu": 1.5}, "priority": 5}, format="json"
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["status"], body["pending_reason"], body["priority"]) == ("pending", "", 5)
    assert body["resources"] == {"cpu": 1.5, "memory_mb": 1024, "gpu": 0}
    assert changed_events(job_id) == [
        (
            "changed by alice: priority 0 → 5; cpu 4 → 1.5",
            "alice",
            {"changes": {"priority": [0, 5], "cpu_millis": [4000, 1500]}},
        )
    ]
    assert place_pending_jobs(batch_size=10).placed == 1
    assert stored(job_id, "status")[0] == JobStatus.RESERVED


def test_a_raised_priority_goes_first_and_keeps_its_submission_order_otherwise(api, team, broker):
    Node.objects.create(name="one", cpu_millis=1000, memory_mb=4096)
    first, second, third = submit(api), submit(api), submit(api)
    assert api.patch(f"/api/jobs/{third}/", {"priority": 1}, format="json").status_code == 200
    place_pending_jobs(batch_size=10)
    assert [stored(j, "status")[0] for j in (first, second, third)] == [
        JobStatus.PENDING,
        JobStatus.PENDING,
        JobStatus.RESERVED,
    ]


def test_a_change_to_another_queue_and_back_to_the_queue_default_time_limit(api, team):
    Node.objects.create(name="one", cpu_millis=4000, memory_mb=4096)
    Queue.objects.create(name="batch", default_timeout_seconds=900).teams.add(team)
    job_id = submit(api, timeout_seconds=60)
    response = api.patch(
        f"/api/jobs/{job_id}/",
        {
            "queue": "batch",
            "timeout_seconds": None,
            "cpu_time_limit_seconds": 30,
            "node_selector": {"zone": "b"},
        },
        format="json",
    )
    assert response.status_code == 200, response.json()
    job = Job.objects.select_related("queue").get(pk=job_id)
    assert (job.queue.name, job.timeout_seconds, job.node_selector) == ("batch", 900, {"zone": "b"})
    assert job.cpu_time_limit_seconds == 30
    ((message, _, data),) = changed_events(job_id)
    assert message == (
        'changed by alice: queue default → batch; node_selector {} → {"zone": "b"}; '
        "timeout 60 → 900; cpu_time_limit none → 30"
    )
    assert data["changes"]["queue"] == ["default", "batch"]


def test_a_held_job_stays_held_and_a_retry_keeps_its_time(api, small_node):
    held = submit(api, hold=True)
    later = timezone.now() + timedelta(minutes=5)
    retrying = submit(api)
    Job.objects.filter(pk=retrying).update(
        attempts=1, not_before=later, pending_reason=PendingReason.WAITING_RETRY
    )
    for job_id in (held, retrying):
        response = api.patch(f"/api/jobs/{job_id}/", {"max_retries": 3}, format="json")
        assert response.status_code == 200
    assert stored(held, "pending_reason", "max_retries") == (PendingReason.HELD, 3)
    assert stored(retrying, "pending_reason", "not_before", "max_retries") == (
        PendingReason.WAITING_RETRY,
        later,
        3,
    )


def test_a_change_to_what_the_job_already_has_records_nothing(api, small_node):
    job_id = submit(api, priority=2)
    response = api.patch(f"/api/jobs/{job_id}/", {"priority": 2, "queue": "default"}, format="json")
    assert response.status_code == 200
    assert changed_events(job_id) == []


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        (
            {},
            {
                "non_field_errors": [
                    "Nothing to change: give one of priority, resources, queue, "
                    "node_selector, timeout_seconds, cpu_time_limit_seconds, max_retries, "
                    "retry_backoff_seconds."
                ]
            },
        ),
        ({"command": ["true"]}, {"command": ["Unknown field."]}),
        ({"resources": {}}, {"resources": ["Give at least one of cpu, memory_mb and gpu."]}),
        ({"resources": {"cpus": 2}}, {"resources": {"cpus": ["Unknown field."]}}),
        ({"priority": 5000}, {"priority": ["Ensure this value is less than or equal to 1000."]}),
        (
            {"resources": {"cpu": 64}},
            {"resources": ["Requests 64 CPU, but the largest node has 4 CPU."]},
        ),
        (
            {"queue": "nowhere"},
            {"queue": ["No queue named 'nowhere' that team blue may submit to."]},
        ),
        (
            {"queue": "small", "resources": {"gpu": 1}},
            {"resources": ["Requests 1 GPU, but queue small allows at most 0 at once."]},
        ),
    ],
)
def test_bad_changes_are_400s_that_change_nothing(api, small_node, body, errors):
    Queue.objects.create(name="small", all_teams=True, quota_cpu_millis=1500, quota_gpu=0)
    job_id = submit(api)
    before = Job.objects.filter(pk=job_id).values().get()
    response = api.patch(f"/api/jobs/{job_id}/", body, format="json")
    assert (response.status_code, response.json()) == (400, errors)
    assert Job.objects.filter(pk=job_id).values().get() == before
    assert changed_events(job_id) == []


def test_only_a_pending_job_that_has_not_run_elsewhere_changes(api, team, small_node):
    Queue.objects.create(name="batch").teams.add(team)
    running = submit(api)
    Job.objects.filter(pk=running).update(status=JobStatus.RUNNING, pending_reason="")
    retried = submit(api)
    Job.objects.filter(pk=retried).update(attempts=1)
    refusals = {
        running: {"status": ["Only a pending job can be changed; this one is running."]},
        retried: {
            "queue": ["A job that has run keeps its queue: its attempts were counted there."]
        },
    }
    for job_id, errors in refusals.items():
        response = api.patch(f"/api/jobs/{job_id}/", {"queue": "batch"}, format="json")
        assert (response.status_code, response.json()) == (400, errors)
        assert stored(job_id, "queue__name")[0] == "default"


def test_an_array_changes_with_its_tasks_that_have_not_started(api, team, small_node, broker):
    Queue.objects.create(name="batch").teams.add(team)
    array = submit(api, array={"count": 3, "parallelism": 1}, resources={"cpu": 1})
    assert place_pending_jobs(batch_size=10).placed == 1  # task 0
    response = api.patch(
        f"/api/jobs/{array}/", {"priority": 4, "resources": {"cpu": 2}}, format="json"
    )
    assert response.status_code == 200, response.json()
    tasks = Job.objects.filter(array_parent_id=array).order_by("array_index")
    assert list(tasks.values_list("status", "priority", "cpu_millis", "pending_reason")) == [
        (JobStatus.RESERVED, 0, 1000, ""),
        (JobStatus.PENDING, 4, 2000, PendingReason.WAITING_ARRAY_SLOT),
        (JobStatus.PENDING, 4, 2000, PendingReason.WAITING_ARRAY_SLOT),
    ]
    assert stored(array, "priority", "cpu_millis") == (4, 2000)
    assert changed_events(array) == [
        (
            "changed by alice: priority 0 → 4; cpu 1 → 2 (2 task(s) not started)",
            "alice",
            {"changes": {"priority": [0, 4], "cpu_millis": [1000, 2000]}, "tasks": 2},
        )
    ]
    # One of its tasks has been placed: the array keeps its queue. A task changes alone.
    response = api.patch(f"/api/jobs/{array}/", {"queue": "batch"}, format="json")
    assert response.status_code == 400
    task = tasks.last()
    assert api.patch(f"/api/jobs/{task.id}/", {"priority": 3}, format="json").status_code == 200
    assert stored(task.id, "priority")[0] == 3
    api.post(f"/api/jobs/{array}/cancel/")
    assert api.patch(f"/api/jobs/{array}/", {"priority": 1}, format="json").json() == {
        "status": ["The array job already ended (cancelled)."]
    }


def test_a_viewer_may_not_change_and_put_is_not_allowed(api, team, small_node):
    job_id = submit(api)
    viewer = User.objects.create_user("vic", password="correct horse battery")
    team_add_member(team=team, user=viewer, role=Role.VIEWER)
    response = token_client(viewer).patch(f"/api/jobs/{job_id}/", {"priority": 9}, format="json")
    assert response.status_code == 403
    assert api.put(f"/api/jobs/{job_id}/", {"priority": 9}, format="json").status_code == 405
    assert stored(job_id, "priority")[0] == 0


def test_a_gang_changed_past_what_the_nodes_hold_at_once_is_refused(api, small_node):
    job_id = submit(api, tasks=2, resources={"cpu": 1})
    response = api.patch(f"/api/jobs/{job_id}/", {"resources": {"cpu": 3}}, format="json")
    assert (response.status_code, response.json()) == (
        400,
        {
            "tasks": [
                "2 tasks of 3 CPU, 256 MB and 0 GPU each cannot all run at once: the "
                "registered nodes hold at most 1 of them."
            ]
        },
    )
    assert stored(job_id, "cpu_millis")[0] == 1000
    response = api.patch(f"/api/jobs/{job_id}/", {"resources": {"cpu": 2}}, format="json")
    assert response.status_code == 200
