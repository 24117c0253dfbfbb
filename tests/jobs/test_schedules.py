"""Schedule services: the beat entry follows every change, and the trigger fires each due
time once, with its misfire and concurrency policies (no beat process: `now` is given)."""

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, PeriodicTask

from jobs.models import Job, JobDefinition, JobSchedule, JobScheduleRun, JobStatus
from jobs.schedules import (
    FIRE_TASK,
    schedule_create,
    schedule_delete,
    schedule_fire,
    schedule_pause,
    schedule_resume,
    schedule_update,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def definition(team, default_queue, small_node):
    return JobDefinition.objects.create(
        team=team, name="echo", command=["echo", "hi"], queue=default_queue
    )


def make(definition, **fields) -> JobSchedule:
    return schedule_create(
        team=definition.team, definition=definition, fields={"name": "s", **fields}
    )


def entry(schedule) -> PeriodicTask:
    return PeriodicTask.objects.get(job_schedule=schedule)


def test_an_interval_schedule_gets_one_beat_entry_lined_up_with_its_due_times(definition):
    schedule = make(definition, interval_seconds=30)
    task = entry(schedule)
    assert task.task == FIRE_TASK and task.enabled
    assert task.kwargs == f'{{"schedule_id": {schedule.pk}}}'
    assert (task.interval.every, task.interval.period) == (30, "seconds")
    assert schedule.next_fire_at == schedule.anchor_at
    assert task.last_run_at == schedule.next_fire_at - timedelta(seconds=30)


def test_a_cron_entry_carries_the_time_zone(definition):
    schedule = make(definition, cron="30 2 * * 1-5", timezone="Europe/Berlin")
    crontab = entry(schedule).crontab
    assert (crontab.minute, crontab.hour, crontab.day_of_week) == ("30", "2", "1-5")
    assert str(crontab.timezone) == "Europe/Berlin"


def test_editing_replaces_the_entry_and_leaves_no_stale_one(definition):
    schedule = make(definition, interval_seconds=30)
    old = entry(schedule).pk
    schedule = schedule_update(
        schedule=schedule, fields={"interval_seconds": None, "cron": "0 * * * *"}
    )
    assert PeriodicTask.objects.filter(task=FIRE_TASK).count() == 1
    assert not PeriodicTask.objects.filter(pk=old).exists()
    assert entry(schedule).crontab is not None and entry(schedule).interval is None


def test_pause_resume_and_delete_follow_on_the_entry(definition):
    schedule = make(definition, run_at=timezone.now() + timedelta(hours=1))
    assert entry(schedule).one_off and entry(schedule).clocked is not None
    schedule = schedule_pause(schedule=schedule)
    assert not entry(schedule).enabled
    schedule = schedule_resume(schedule=schedule)
    assert entry(schedule).enabled
    assert ClockedSchedule.objects.count() == 1
    schedule_delete(schedule=schedule)
    assert not PeriodicTask.objects.filter(task=FIRE_TASK).exists()
    assert not ClockedSchedule.objects.exists()


def test_it_fires_each_due_time_once(definition):
    schedule = make(definition, interval_seconds=10)
    due = schedule.next_fire_at
    assert schedule_fire(schedule_id=schedule.pk, now=due - timedelta(seconds=1)) is None
    run = schedule_fire(schedule_id=schedule.pk, now=due + timedelta(milliseconds=50))
    assert run.outcome == "submitted" and run.due_at == due and not run.catch_up
    # A second beat, a redelivered or retried trigger: nothing new.
    for delay in (0.1, 3, 9.9):
        assert schedule_fire(schedule_id=schedule.pk, now=due + timedelta(seconds=delay)) is None
    job = Job.objects.get()
    assert job.definition == definition and job.command == ["echo", "hi"]
    assert job.idempotency_key == f"schedule-{schedule.pk}-{due.isoformat()}"
    schedule.refresh_from_db()
    assert schedule.last_fire_at == due
    assert schedule.next_fire_at == due + timedelta(seconds=10)


def at(due, seconds=0.05):
    return due + timedelta(seconds=seconds)


def test_run_once_folds_the_due_times_missed_in_downtime_into_one_catch_up(definition):
    schedule = make(definition, interval_seconds=10, misfire_policy="run_once")
    first = schedule.next_fire_at
    schedule_fire(schedule_id=schedule.pk, now=at(first))
    # Beat is down for d1, d2, d3 and comes back 7 s after d3.
    run = schedule_fire(schedule_id=schedule.pk, now=at(first + timedelta(seconds=30), 7))
    assert run.outcome == "submitted" and run.catch_up and run.missed == 2
    assert run.due_at == first + timedelta(seconds=30)
    assert schedule_fire(schedule_id=schedule.pk, now=at(first, 39)) is None
    on_time = schedule_fire(schedule_id=schedule.pk, now=at(first, 40.05))
    assert on_time.due_at == first + timedelta(seconds=40) and not on_time.catch_up
    assert Job.objects.count() == 3


def test_skip_drops_the_due_times_missed_in_downtime(definition):
    schedule = make(definition, interval_seconds=10, misfire_policy="skip")
    first = schedule.next_fire_at
    schedule_fire(schedule_id=schedule.pk, now=at(first))
    run = schedule_fire(schedule_id=schedule.pk, now=at(first, 37))
    assert run.outcome == "skipped_misfire" and run.missed == 2 and run.job is None
    # Back in time for a due time: it runs, and the missed ones are counted.
    schedule = make(definition, name="t", interval_seconds=10, misfire_policy="skip")
    first = schedule.next_fire_at
    run = schedule_fire(schedule_id=schedule.pk, now=at(first, 20.1))
    assert run.outcome == "submitted" and run.missed == 2 and not run.catch_up
    assert Job.objects.count() == 2


def test_forbid_skips_while_the_previous_job_is_active_and_records_it(definition):
    schedule = make(definition, interval_seconds=10, concurrency_policy="forbid")
    first = schedule.next_fire_at
    job = schedule_fire(schedule_id=schedule.pk, now=at(first)).job
    skipped = schedule_fire(schedule_id=schedule.pk, now=at(first, 10))
    assert skipped.outcome == "skipped_running" and skipped.job is None
    Job.objects.filter(pk=job.pk).update(status=JobStatus.SUCCEEDED)
    assert schedule_fire(schedule_id=schedule.pk, now=at(first, 20)).outcome == "submitted"
    assert list(JobScheduleRun.objects.values_list("outcome", flat=True)) == [
        "submitted",
        "skipped_running",
        "submitted",
    ]


def test_replace_cancels_the_active_job_and_submits_a_new_one(definition):
    schedule = make(definition, interval_seconds=10, concurrency_policy="replace")
    first = schedule.next_fire_at
    old = schedule_fire(schedule_id=schedule.pk, now=at(first)).job
    run = schedule_fire(schedule_id=schedule.pk, now=at(first, 10))
    old.refresh_from_db()
    assert old.status == JobStatus.CANCELLED
    assert run.outcome == "submitted" and run.cancelled_job == old and run.job != old


def test_a_paused_schedule_fires_nothing_and_resumes_without_catching_up(definition):
    schedule = make(definition, interval_seconds=10)
    first = schedule.next_fire_at
    schedule_fire(schedule_id=schedule.pk, now=at(first))
    schedule_pause(schedule=schedule)
    assert schedule_fire(schedule_id=schedule.pk, now=at(first, 10)) is None
    before = timezone.now()
    resumed = schedule_resume(schedule=schedule)
    assert resumed.next_fire_at > before
    assert (resumed.next_fire_at - first).total_seconds() % 10 == 0
    run = schedule_fire(schedule_id=schedule.pk, now=at(resumed.next_fire_at))
    assert run.missed == 0 and not run.catch_up
    assert Job.objects.count() == 2


def test_a_one_off_in_the_past_is_refused(definition):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as error:
        make(definition, run_at=timezone.now() - timedelta(seconds=1))
    assert "run_at" in error.value.message_dict
    assert not JobSchedule.objects.exists()


def test_a_one_off_fires_once_and_is_done(definition):
    run_at = timezone.now() + timedelta(minutes=5)
    schedule = make(definition, run_at=run_at)
    assert schedule_fire(schedule_id=schedule.pk, now=at(run_at)).outcome == "submitted"
    assert schedule_fire(schedule_id=schedule.pk, now=at(run_at, 60)) is None
    schedule.refresh_from_db()
    assert schedule.next_fire_at is None and schedule.last_fire_at == run_at


def test_a_job_that_cannot_be_submitted_is_recorded(definition, small_node):
    schedule = make(definition, interval_seconds=10)
    JobDefinition.objects.filter(pk=definition.pk).update(cpu_millis=64000)
    run = schedule_fire(schedule_id=schedule.pk, now=at(schedule.next_fire_at))
    assert run.outcome == "submit_failed" and "64 CPU" in run.error
    assert not Job.objects.exists()


def test_the_trigger_of_a_deleted_schedule_removes_its_orphan_entry(definition):
    schedule = make(definition, interval_seconds=10)
    definition.team.delete()  # cascades to the schedule, not through the services
    assert not JobSchedule.objects.exists()
    assert PeriodicTask.objects.filter(task=FIRE_TASK).exists()
    assert schedule_fire(schedule_id=schedule.pk) is None
    assert not PeriodicTask.objects.filter(task=FIRE_TASK).exists()


def test_the_database_refuses_a_schedule_of_two_kinds(definition):
    from django.db import IntegrityError

    with pytest.raises(IntegrityError):
        JobSchedule.objects.create(
            team=definition.team,
            definition=definition,
            name="x",
            cron="* * * * *",
            interval_seconds=5,
            run_at=datetime(2030, 1, 1, tzinfo=UTC),
        )


def test_a_late_interval_fire_lines_the_beat_entry_up_again(definition):
    schedule = make(definition, interval_seconds=2)
    first = schedule.next_fire_at
    old = entry(schedule).pk
    # Late, but the entry was just written: it is left to settle (a busy control worker).
    schedule_fire(schedule_id=schedule.pk, now=at(first, 1))
    assert entry(schedule).pk == old
    # Beat restarted a second after a due time: it would go on firing a second late.
    schedule_fire(schedule_id=schedule.pk, now=at(first, 21))
    task = entry(schedule)
    assert task.pk != old and PeriodicTask.objects.filter(task=FIRE_TASK).count() == 1
    assert task.last_run_at == first + timedelta(seconds=20)


def test_a_definition_with_schedules_cannot_be_deleted(definition):
    from django.db.models import RestrictedError

    make(definition, interval_seconds=10)
    with pytest.raises(RestrictedError):
        definition.delete()


@pytest.mark.django_db(transaction=True)
def test_a_schedule_of_a_definition_being_deleted_is_a_400_not_a_500(team, default_queue):
    """A delete holds the definition's row while a schedule of it is created: the create
    waits for it, then answers that the definition is gone, and leaves nothing behind."""
    import threading

    import psycopg
    from django.core.exceptions import ValidationError
    from django.db import connection

    definition = JobDefinition.objects.create(
        team=team, name="doomed", command=["true"], queue=default_queue
    )
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    outcome = {}

    def create():
        try:
            make(definition, interval_seconds=60)
            outcome["created"] = True
        except ValidationError as exc:
            outcome["error"] = exc.message_dict
        finally:
            connection.close()

    with psycopg.connect(**params) as deleter:
        deleter.execute(
            "SELECT 1 FROM jobs_jobdefinition WHERE id = %s FOR UPDATE", [definition.pk]
        )
        creator = threading.Thread(target=create)
        creator.start()
        creator.join(1.0)
        assert creator.is_alive()  # waiting for the delete
        deleter.execute("DELETE FROM jobs_jobdefinition WHERE id = %s", [definition.pk])
        deleter.commit()
    creator.join(10)
    assert outcome == {"error": {"definition": ["This definition was just deleted."]}}
    assert (
        not JobSchedule.objects.exists()
        and not PeriodicTask.objects.filter(name__startswith="schedule").exists()
    )
