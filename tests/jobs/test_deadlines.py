"""Deadlines: among equal priorities earlier deadlines are placed first; the cycle never
places a job past its deadline; the check cancels such jobs with the reason, asks a
running one's node to stop it, and cancels an array job's tasks."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import Job, JobStatus
from jobs.scheduling.cycle import place_pending_jobs
from jobs.services.deadlines import DEADLINE_PASSED, jobs_cancel_past_deadline
from nodes.models import Node
from tests.jobs.making import make_jobs, start_running, submit

pytestmark = pytest.mark.django_db


def test_earlier_deadlines_are_placed_first_among_equal_priority(team):
    Node.objects.create(name="one", cpu_millis=2000, memory_mb=4096)
    soon = timezone.now() + timedelta(hours=1)
    none = make_jobs(team, 1)[0]
    later = make_jobs(team, 1, deadline=soon + timedelta(minutes=30))[0]
    earlier = make_jobs(team, 1, deadline=soon)[0]
    urgent = make_jobs(team, 1, priority=5)[0]  # priority still comes first

    place_pending_jobs(batch_size=10)

    placed = set(Job.objects.filter(status=JobStatus.RESERVED).values_list("id", flat=True))
    assert placed == {urgent.id, earlier.id}
    assert Job.objects.get(pk=later.id).status == Job.objects.get(pk=none.id).status == "pending"


def test_why_counts_earlier_deadlines_ahead(api, small_node):
    soon = timezone.now() + timedelta(hours=1)
    first = submit(api)
    second = submit(api, deadline=soon.isoformat())
    assert api.get(f"/api/jobs/{second}/why/").json()["queue"]["position"] == 1
    assert api.get(f"/api/jobs/{first}/why/").json()["queue"]["position"] == 2


def test_the_cycle_never_places_a_job_past_its_deadline(team):
    Node.objects.create(name="one", cpu_millis=8000, memory_mb=4096)
    late = make_jobs(team, 1, deadline=timezone.now() - timedelta(seconds=1))[0]
    assert place_pending_jobs(batch_size=10).placed == 0
    assert Job.objects.get(pk=late.id).status == JobStatus.PENDING


def test_the_check_cancels_pending_and_stops_running_jobs_past_their_deadline(team, api):
    node = Node.objects.create(name="one", cpu_millis=8000, memory_mb=4096)
    running = make_jobs(team, 1, deadline=timezone.now() + timedelta(hours=1))[0]
    start_running(node)
    past = timezone.now() - timedelta(seconds=1)
    Job.objects.filter(pk=running.pk).update(deadline=past)
    pending = make_jobs(team, 1, deadline=past)[0]
    future = make_jobs(team, 1, deadline=timezone.now() + timedelta(hours=1))[0]

    assert jobs_cancel_past_deadline() == 2

    pending.refresh_from_db()
    running.refresh_from_db()
    assert (pending.status, pending.cancel_reason) == (JobStatus.CANCELLED, DEADLINE_PASSED)
    assert running.status == JobStatus.RUNNING and running.cancel_requested_at is not None
    assert running.cancel_reason == DEADLINE_PASSED
    assert Job.objects.get(pk=future.pk).status == JobStatus.PENDING
    assert jobs_cancel_past_deadline() == 0  # asked once
    body = api.get(f"/api/jobs/{pending.pk}/").json()
    assert (body["status"], body["cancel_reason"]) == ("cancelled", "deadline passed")


def test_an_array_past_its_deadline_is_cancelled_with_its_tasks(api, small_node):
    array_id = submit(
        api,
        array={"count": 3, "parallelism": 1},
        deadline=(timezone.now() + timedelta(hours=1)).isoformat(),
    )
    Job.objects.filter(pk=array_id).update(deadline=timezone.now() - timedelta(seconds=1))
    assert jobs_cancel_past_deadline() >= 1
    array = Job.objects.get(pk=array_id)
    assert (array.status, array.cancel_reason) == (JobStatus.CANCELLED, DEADLINE_PASSED)
    assert set(array.array_tasks.values_list("status", "cancel_reason")) == {
        (JobStatus.CANCELLED, DEADLINE_PASSED)
    }


def test_a_user_cancel_records_who_asked(api, small_node):
    job_id = submit(api)
    assert api.post(f"/api/jobs/{job_id}/cancel/").json()["cancel_reason"] == "cancelled by alice"
