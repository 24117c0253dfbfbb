"""Hold and release (Slurm's `scontrol hold` and `release`), through the API: a held job is
placed by no scheduling cycle and by no finish's freed room until it is released, and
keeps its place in its queue's order."""

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from accounts.models import Role, User
from accounts.services import team_add_member
from events.models import Event, EventType
from jobs.accounting import Success
from jobs.models import Job, JobStatus, PendingReason
from jobs.scheduling.cycle import place_pending_jobs
from jobs.scheduling.freed_room import place_on_freed_room
from jobs.services.executions import executions_finish_succeeded
from nodes.models import Node
from tests.conftest import token_client
from tests.jobs.making import make_jobs, start_running, submit

pytestmark = pytest.mark.django_db


def reason(job_id: int) -> tuple[str, str]:
    job = Job.objects.get(pk=job_id)
    return job.status, job.pending_reason


def test_a_held_job_is_not_placed_until_released_and_keeps_its_place(api, small_node, broker):
    first, second = submit(api), submit(api)
    response = api.post(f"/api/jobs/{first}/hold/")
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["pending_reason"]) == ("pending", "held")
    why = api.get(f"/api/jobs/{first}/why/").json()
    assert why["reason"] == "held"
    assert why["summary"].startswith(
        f"The job is held: it is not placed until someone releases it "
        f"(POST /api/jobs/{first}/release/)."
    )
    assert "preemption" not in why or why["preemption"] is None

    # The node has room for both: only the other one goes.
    assert place_pending_jobs(batch_size=10).placed == 1
    assert reason(first) == (JobStatus.PENDING, PendingReason.HELD)
    assert reason(second)[0] == JobStatus.RESERVED
    assert place_pending_jobs(batch_size=10).placed == 0

    response = api.post(f"/api/jobs/{first}/release/")
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["pending_reason"]) == ("pending", "")
    assert place_pending_jobs(batch_size=10).placed == 1
    assert reason(first)[0] == JobStatus.RESERVED
    events = Event.objects.filter(
        job_id=first, type__in=[EventType.JOB_HELD, EventType.JOB_RELEASED]
    )
    assert [(e.type, e.message, e.actor) for e in events.order_by("id")] == [
        (EventType.JOB_HELD, "held by alice", "alice"),
        (EventType.JOB_RELEASED, "released by alice", "alice"),
    ]


def test_a_held_job_is_not_placed_on_the_room_a_finish_frees(team, api, broker):
    node = Node.objects.create(name="one", cpu_millis=1000, memory_mb=4096)
    make_jobs(team, 1)
    (token,) = start_running(node).values()
    waiting = make_jobs(team, 1)[0]
    place_pending_jobs(batch_size=10)  # seen by a cycle: it waits for room
    assert reason(waiting.id) == (JobStatus.PENDING, PendingReason.INSUFFICIENT_CAPACITY)
    assert api.post(f"/api/jobs/{waiting.id}/hold/").status_code == 200

    with transaction.atomic():
        executions_finish_succeeded([Success(token)], wake=False)
        freed = place_on_freed_room(node_id=node.id)
    assert freed.placements == [] and freed.room_left
    assert reason(waiting.id) == (JobStatus.PENDING, PendingReason.HELD)


def test_a_held_retry_is_released_to_wait_for_its_retry_time(api, small_node):
    job_id = submit(api)
    later = timezone.now() + timedelta(minutes=5)
    Job.objects.filter(pk=job_id).update(
        attempts=1, not_before=later, pending_reason=PendingReason.WAITING_RETRY
    )
    assert api.post(f"/api/jobs/{job_id}/hold/").status_code == 200
    assert api.post(f"/api/jobs/{job_id}/release/").json()["pending_reason"] == "waiting_retry"
    assert Job.objects.get(pk=job_id).not_before == later


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (
            lambda job_id: Job.objects.filter(pk=job_id).update(
                pending_reason=PendingReason.WAITING_DEPENDENCIES
            ),
            "The job is waiting for dependencies: it can be held once that is over, or cancelled.",
        ),
        (
            lambda job_id: Job.objects.filter(pk=job_id).update(
                status=JobStatus.CANCELLED, pending_reason=""
            ),
            "Only a pending job can be held; this one is cancelled.",
        ),
    ],
)
def test_a_job_that_cannot_be_held_is_a_400_and_nothing_changes(api, small_node, prepare, message):
    job_id = submit(api)
    prepare(job_id)
    before = reason(job_id)
    response = api.post(f"/api/jobs/{job_id}/hold/")
    assert (response.status_code, response.json()) == (400, {"status": [message]})
    assert reason(job_id) == before
    assert not Event.objects.filter(job_id=job_id, type=EventType.JOB_HELD).exists()


def test_holding_twice_and_releasing_what_is_not_held_are_400s(api, small_node):
    job_id = submit(api)
    assert api.post(f"/api/jobs/{job_id}/release/").json() == {
        "status": ["Only a held job can be released; this one is pending."]
    }
    api.post(f"/api/jobs/{job_id}/hold/")
    assert api.post(f"/api/jobs/{job_id}/hold/").json() == {"status": ["The job is already held."]}


def test_a_viewer_cannot_hold_and_another_team_does_not_see_the_job(
    api, outsider_api, small_node, team
):
    job_id = submit(api)
    viewer = User.objects.create_user("vic", password="pw-for-tests-only")
    team_add_member(team=team, user=viewer, role=Role.VIEWER)
    assert token_client(viewer).post(f"/api/jobs/{job_id}/hold/").status_code == 403
    assert outsider_api.post(f"/api/jobs/{job_id}/hold/").status_code == 404
    assert reason(job_id) == (JobStatus.PENDING, PendingReason.NONE)


def test_a_job_submitted_held_waits_until_released(api, small_node, broker):
    job_id = submit(api, hold=True)
    assert reason(job_id) == (JobStatus.PENDING, PendingReason.HELD)
    submitted = Event.objects.get(job_id=job_id, type=EventType.JOB_SUBMITTED)
    assert submitted.message == "submitted by alice to queue default, held"
    assert place_pending_jobs(batch_size=10).placed == 0
    api.post(f"/api/jobs/{job_id}/release/")
    assert place_pending_jobs(batch_size=10).placed == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"depends_on": [{"job": "UPSTREAM"}]},
            "A job with dependencies is held by them until they are met: hold it then.",
        ),
    ],
)
def test_a_held_submission_that_cannot_be_held_is_a_400_and_makes_nothing(
    api, small_node, extra, message
):
    upstream = submit(api)
    if "depends_on" in extra:
        extra = {"depends_on": [{"job": upstream}]}
    response = api.post(
        "/api/jobs/", {"name": "h", "command": ["true"], "hold": True, **extra}, format="json"
    )
    assert (response.status_code, response.json()) == (400, {"hold": [message]})
    assert Job.objects.count() == 1


def array_tasks(array_id: int) -> list[tuple[int, str, str]]:
    """(index, status, reason) of each task, in index order."""
    tasks = Job.objects.filter(array_parent_id=array_id).order_by("array_index")
    return list(tasks.values_list("array_index", "status", "pending_reason"))


def test_an_array_held_whole_releases_no_task_for_a_slot_until_it_is_released(api, broker):
    node = Node.objects.create(name="big", cpu_millis=64000, memory_mb=65536)
    array_id = submit(api, array={"count": 5, "parallelism": 2})
    tokens = start_running(node)  # tasks 0 and 1
    assert api.post(f"/api/jobs/{array_id}/hold/").json()["held_at"] is not None

    # A finish frees a slot, but no task is given it; the cycle places nothing.
    with transaction.atomic():
        executions_finish_succeeded([Success(min(tokens.values()))], wake=False)
    assert place_pending_jobs(batch_size=10).placed == 0
    assert [reason for _, _, reason in array_tasks(array_id)[2:]] == ["waiting_array_slot"] * 3
    task = Job.objects.get(array_parent_id=array_id, array_index=2)
    why = api.get(f"/api/jobs/{task.id}/why/").json()
    assert why["summary"].startswith(f"Its array job {array_id} is held: no task of it")
    assert api.post(f"/api/jobs/{array_id}/hold/").json() == {
        "status": ["The array job is already held."]
    }

    # Released: as many tasks as its parallelism has room for (one runs), in index order.
    response = api.post(f"/api/jobs/{array_id}/release/")
    assert (response.status_code, response.json()["held_at"]) == (200, None)
    assert [reason for _, _, reason in array_tasks(array_id)[2:]] == [
        "",
        "waiting_array_slot",
        "waiting_array_slot",
    ]
    events = Event.objects.filter(job_id=array_id).order_by("id")
    assert [
        e.message for e in events if e.type in (EventType.JOB_HELD, EventType.JOB_RELEASED)
    ] == [
        "held by alice: 0 task(s) held, and none is released for a slot",
        "released by alice: 1 task(s) released for their slots",
    ]
    assert api.post(f"/api/jobs/{array_id}/release/").json() == {
        "status": ["Only a held job can be released; this one is running."]
    }


def test_holding_an_array_holds_its_tasks_that_wait_to_be_placed_and_not_one_by_one(
    api, small_node
):
    array_id = submit(api, array={"count": 4, "parallelism": 2})
    retrying = Job.objects.get(array_parent_id=array_id, array_index=1)
    later = timezone.now() + timedelta(minutes=5)
    Job.objects.filter(pk=retrying.pk).update(
        attempts=1, not_before=later, pending_reason=PendingReason.WAITING_RETRY
    )
    api.post(f"/api/jobs/{array_id}/hold/")
    assert array_tasks(array_id) == [
        (0, "pending", "held"),
        (1, "pending", "held"),
        (2, "pending", "waiting_array_slot"),
        (3, "pending", "waiting_array_slot"),
    ]
    assert place_pending_jobs(batch_size=10).placed == 0
    first = Job.objects.get(array_parent_id=array_id, array_index=0)
    assert api.post(f"/api/jobs/{first.id}/release/").json() == {
        "status": [f"Its array job {array_id} is held: release the array job."]
    }
    api.post(f"/api/jobs/{array_id}/release/")
    # The two slots go to the first two again; the retry still waits for its time.
    assert array_tasks(array_id) == [
        (0, "pending", ""),
        (1, "pending", "waiting_retry"),
        (2, "pending", "waiting_array_slot"),
        (3, "pending", "waiting_array_slot"),
    ]
    api.post(f"/api/jobs/{array_id}/cancel/")
    assert api.post(f"/api/jobs/{array_id}/hold/").json() == {
        "status": ["The array job already ended (cancelled)."]
    }


def test_an_array_submitted_held_places_no_task_until_released(api, small_node):
    array_id = submit(api, array={"count": 3, "parallelism": 2}, hold=True)
    assert api.get(f"/api/jobs/{array_id}/").json()["held_at"] is not None
    assert array_tasks(array_id) == [
        (0, "pending", "held"),
        (1, "pending", "held"),
        (2, "pending", "waiting_array_slot"),
    ]
    assert not Job.objects.filter(array_parent_id=array_id, held_at__isnull=False).exists()
    assert place_pending_jobs(batch_size=10).placed == 0
    api.post(f"/api/jobs/{array_id}/release/")
    assert place_pending_jobs(batch_size=10).placed == 2
