"""Every state change a person would ask about writes its event, in the transaction of the
change: jobs (submitted, placed, started, ended, retried, lost, cancelled, requeued,
acknowledged), nodes (registered, offline, cordoned, drained, back) and schedules."""

from datetime import timedelta

import pytest
from django.db import IntegrityError
from django.utils import timezone

from events.models import Event, EventType
from events.services import event_record, events_purge
from jobs.accounting import Success
from jobs.models import ExecutionStatus, Job, JobDefinition, JobStatus
from jobs.schedules import schedule_create, schedule_fire
from jobs.scheduling.cycle import place_pending_jobs
from jobs.services.executions import (
    execution_claim,
    execution_finish,
    executions_finish_succeeded,
)
from jobs.services.failover import execution_fail_over
from nodes.models import Node
from nodes.services import (
    node_cordon,
    node_drain,
    node_drain_complete,
    node_register,
    node_uncordon,
    nodes_mark_lost,
)
from tests.jobs.making import submit

pytestmark = pytest.mark.django_db


def types_of(job_id) -> list[str]:
    return list(
        Event.objects.filter(job_id=job_id).order_by("at", "id").values_list("type", flat=True)
    )


def test_a_job_that_succeeds_has_submitted_placed_started_succeeded(api, small_node, broker):
    job_id = submit(api)
    token = place_pending_jobs(batch_size=10).tokens[0]
    execution_claim(token=token, node_id=small_node.id)
    assert execution_finish(token=token, exit_code=0) == ExecutionStatus.SUCCEEDED
    assert types_of(job_id) == ["job.submitted", "job.placed", "job.started", "job.succeeded"]
    placed = Event.objects.get(job_id=job_id, type=EventType.JOB_PLACED)
    assert placed.node_id == small_node.id
    assert placed.data == {
        "node": "static-1",
        "queue": "default",
        "strategy": "binpack",
        "token": token,
    }
    assert placed.message == "placed on static-1 (queue default, binpack), attempt 1"
    assert placed.team_id == Job.objects.get(pk=job_id).team_id
    submitted = Event.objects.get(job_id=job_id, type=EventType.JOB_SUBMITTED)
    assert submitted.actor == "alice"


def test_a_failed_attempt_plans_a_retry_then_dead_letters(api, small_node, broker):
    job_id = submit(api, max_retries=1, retry_backoff_seconds=1)
    for _ in range(2):
        Job.objects.filter(pk=job_id).update(not_before=None)
        token = place_pending_jobs(batch_size=10).tokens[0]
        execution_claim(token=token, node_id=small_node.id)
        execution_finish(token=token, exit_code=3, error="exit code 3")
    assert types_of(job_id) == [
        "job.submitted",
        "job.placed",
        "job.started",
        "job.attempt_failed",
        "job.retry_planned",
        "job.placed",
        "job.started",
        "job.attempt_failed",
        "job.dead_lettered",
    ]
    retry = Event.objects.get(job_id=job_id, type=EventType.JOB_RETRY_PLANNED)
    assert retry.attempt == 2
    assert retry.data["reason"] == "exit code 3"
    assert "retry planned as attempt 2 at " in retry.message

    assert api.post(f"/api/jobs/{job_id}/acknowledge/").status_code == 200
    assert api.post(f"/api/jobs/{job_id}/retry/").status_code == 200
    requeued = Event.objects.filter(job_id=job_id).order_by("-id")[0]
    assert (requeued.type, requeued.actor, requeued.attempt) == ("job.requeued", "alice", 3)
    assert Event.objects.filter(
        job_id=job_id, type=EventType.JOB_ACKNOWLEDGED, actor="alice"
    ).exists()


def test_cancels_say_by_whom(api, small_node, broker):
    pending = submit(api)
    running = submit(api)
    assert api.post(f"/api/jobs/{pending}/cancel/").status_code == 200
    cancelled = Event.objects.get(job_id=pending, type=EventType.JOB_CANCELLED)
    assert (cancelled.message, cancelled.actor) == ("cancelled by alice", "alice")

    token = place_pending_jobs(batch_size=10).tokens[0]
    execution_claim(token=token, node_id=small_node.id)
    assert api.post(f"/api/jobs/{running}/cancel/").status_code == 200
    assert types_of(running)[-1] == "job.cancel_requested"
    execution_finish(token=token, exit_code=None, cancelled=True)
    assert types_of(running)[-1] == "job.cancelled"


def test_a_lost_attempt_says_where_and_plans_its_retry(api, small_node, broker):
    job_id = submit(api)
    token = place_pending_jobs(batch_size=10).tokens[0]
    execution = execution_claim(token=token, node_id=small_node.id)
    assert execution_fail_over(execution_id=execution.id, reason="node lost")
    assert types_of(job_id)[-2:] == ["job.node_lost", "job.retry_planned"]
    lost = Event.objects.get(job_id=job_id, type=EventType.JOB_NODE_LOST)
    assert (lost.node_id, lost.attempt, lost.message) == (
        small_node.id,
        1,
        "attempt 1 lost on static-1: node lost",
    )


def test_node_events_from_registration_to_loss_and_back(db, settings):
    node_register(name="n1", cpu_millis=2000, memory_mb=1024)
    node_cordon(name="n1")
    node_uncordon(name="n1")
    node_drain(name="n1")  # nothing on it: cordoned at once
    node_uncordon(name="n1")
    Node.objects.filter(name="n1").update(last_heartbeat=timezone.now() - timedelta(minutes=5))
    assert nodes_mark_lost(older_than_seconds=30) == ["n1"]
    node_register(name="n1", cpu_millis=2000, memory_mb=1024)
    node = Node.objects.get(name="n1")
    events = Event.objects.filter(node_id=node.id).order_by("at", "id")
    assert [e.type for e in events] == [
        "node.registered",
        "node.cordoned",
        "node.uncordoned",
        "node.drained",
        "node.uncordoned",
        "node.offline",
        "node.back",
    ]
    assert all(e.team_id is None for e in events)


def test_a_draining_node_is_drained_once_empty(api, small_node, broker):
    submit(api)
    token = place_pending_jobs(batch_size=10).tokens[0]
    execution_claim(token=token, node_id=small_node.id)
    node_drain(name=small_node.name)
    assert Event.objects.filter(node_id=small_node.id).latest("id").type == "node.draining"
    execution_finish(token=token, exit_code=0)
    assert node_drain_complete() == 1
    assert Event.objects.filter(node_id=small_node.id).latest("id").type == "node.drained"


def test_schedule_runs_record_fired_caught_up_skipped_and_missed(
    team, default_queue, small_node, broker
):
    definition = JobDefinition.objects.create(
        team=team, queue=default_queue, name="d", command=["true"]
    )

    def make(name, **fields):
        schedule = schedule_create(
            team=team,
            definition=definition,
            fields={"name": name, "interval_seconds": 10, **fields},
        )
        return schedule, schedule.next_fire_at

    schedule, first = make("s", concurrency_policy="forbid")
    fired = schedule_fire(schedule_id=schedule.pk, now=first + timedelta(seconds=0.05))
    skipped = schedule_fire(schedule_id=schedule.pk, now=first + timedelta(seconds=10.05))
    assert skipped.outcome == "skipped_running"
    Job.objects.filter(pk=fired.job_id).update(status=JobStatus.SUCCEEDED)
    # Beat was down for two due times and is back 7 s after the third.
    caught_up = schedule_fire(schedule_id=schedule.pk, now=first + timedelta(seconds=47))
    assert caught_up.catch_up and caught_up.missed == 2
    events = list(Event.objects.filter(schedule_id=schedule.pk).order_by("at", "id"))
    assert [e.type for e in events] == ["schedule.fired", "schedule.skipped", "schedule.caught_up"]
    assert (events[0].job_id, events[2].job_id) == (fired.job_id, caught_up.job_id)
    assert events[2].data["missed"] == 2
    assert all(e.team_id == team.pk for e in events)

    other, first = make("t", misfire_policy="skip")
    schedule_fire(schedule_id=other.pk, now=first + timedelta(seconds=37))
    [missed] = Event.objects.filter(schedule_id=other.pk)
    assert missed.type == "schedule.missed"
    assert missed.job_id is None


def test_purge_removes_only_events_older_than_the_retention(db):
    now = timezone.now()
    old = event_record(type=EventType.NODE_OFFLINE, message="old", at=now - timedelta(days=31))
    recent = event_record(type=EventType.NODE_OFFLINE, message="new", at=now - timedelta(days=29))
    assert events_purge(older_than_days=30, now=now) == 1
    assert list(Event.objects.values_list("pk", flat=True)) == [recent.pk]
    assert not Event.objects.filter(pk=old.pk).exists()


def test_events_outlive_their_job(api, small_node):
    job_id = submit(api)
    Job.objects.filter(pk=job_id).delete()
    assert types_of(job_id) == ["job.submitted"]


def test_the_database_refuses_an_unknown_type(db):
    with pytest.raises(IntegrityError):
        Event.objects.create(at=timezone.now(), type="job.exploded", message="")


def test_a_success_batch_writes_one_event_per_success(api, small_node, broker):
    ids = [submit(api) for _ in range(3)]
    tokens = place_pending_jobs(batch_size=10).tokens
    for token in tokens:
        execution_claim(token=token, node_id=small_node.id)
    assert len(executions_finish_succeeded([Success(token=t) for t in tokens])) == 3
    assert Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).count() == 3
    assert Event.objects.filter(job_id__in=ids, type=EventType.JOB_SUCCEEDED).count() == 3
