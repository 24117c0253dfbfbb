"""Schedules by the thousand: created in bulk, read by due time, fired a batch at a time,
and beat (jobs.beat.ScheduleBeat) sending what is due to the real broker, each due time
once, a batch to a message."""

import base64
import json
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs.beat import IN_FLIGHT_POLL_SECONDS, LATER_PRIORITY, ScheduleBeat
from jobs.models import Job, JobDefinition, JobSchedule, JobScheduleRun
from jobs.schedules import (
    FIRE_BATCH_TASK,
    FIRE_TASK,
    schedule_create,
    schedules_create_many,
    schedules_due,
    schedules_fire,
)
from scheduler_site.celery import app as celery_app

pytestmark = pytest.mark.django_db


@pytest.fixture
def definition(team, default_queue, small_node):
    return JobDefinition.objects.create(
        team=team, name="true", command=["true"], queue=default_queue
    )


def hourly(definition, count: int, minute: int | None = None) -> list[JobSchedule]:
    return schedules_create_many(
        team=definition.team,
        definition=definition,
        fields_list=[
            {"name": f"hourly-{i}", "cron": f"{i % 60 if minute is None else minute} * * * *"}
            for i in range(count)
        ],
    )


def test_many_schedules_are_created_with_their_entries_in_a_few_statements(
    definition, django_assert_max_num_queries
):
    before = timezone.now()
    with django_assert_max_num_queries(16):
        created = hourly(definition, 120)
    after = timezone.now()
    assert JobSchedule.objects.count() == 120
    for schedule in JobSchedule.objects.select_related("periodic_task__crontab"):
        minute = int(schedule.name.split("-")[1]) % 60
        assert schedule.next_fire_at.minute == minute
        # The next fire is after the moment of creation and within the hour following it.
        assert before < schedule.next_fire_at <= after + timedelta(hours=1)
        assert schedule.periodic_task.task == FIRE_TASK
        assert schedule.periodic_task.crontab.minute == str(minute)
        assert schedule.periodic_task.kwargs == f'{{"schedule_id": {schedule.pk}}}'
    assert [s.pk for s in created] == sorted(JobSchedule.objects.values_list("pk", flat=True))


def test_a_bad_schedule_in_a_bulk_create_is_named_and_nothing_is_written(definition):
    schedule_create(
        team=definition.team, definition=definition, fields={"name": "taken", "cron": "* * * * *"}
    )
    fields = [{"name": "ok", "cron": "* * * * *"}, {"name": "bad", "cron": "61 * * * *"}]
    with pytest.raises(ValidationError) as refused:
        schedules_create_many(team=definition.team, definition=definition, fields_list=fields)
    assert "1.cron" in refused.value.message_dict
    fields = [{"name": "ok", "cron": "* * * * *"}, {"name": "taken", "cron": "* * * * *"}]
    with pytest.raises(ValidationError) as refused:
        schedules_create_many(team=definition.team, definition=definition, fields_list=fields)
    assert "1.name" in refused.value.message_dict
    fields = [{"name": "twice", "cron": "* * * * *"}, {"name": "twice", "cron": "* * * * *"}]
    with pytest.raises(ValidationError):
        schedules_create_many(team=definition.team, definition=definition, fields_list=fields)
    assert list(JobSchedule.objects.values_list("name", flat=True)) == ["taken"]
    assert PeriodicTask.objects.filter(task=FIRE_TASK).count() == 1


def test_due_schedules_are_read_soonest_first_shortest_interval_first(definition):
    schedules = hourly(definition, 3)
    every = schedule_create(
        team=definition.team, definition=definition, fields={"name": "every", "interval_seconds": 5}
    )
    paused = schedule_create(
        team=definition.team,
        definition=definition,
        fields={"name": "paused", "interval_seconds": 5, "enabled": False},
    )
    moment = timezone.now().replace(microsecond=0) + timedelta(seconds=30)
    JobSchedule.objects.filter(pk=schedules[2].pk).update(next_fire_at=moment + timedelta(hours=1))
    JobSchedule.objects.filter(pk__in=[s.pk for s in schedules[:2]]).update(next_fire_at=moment)
    JobSchedule.objects.filter(pk__in=[every.pk, paused.pk]).update(next_fire_at=moment)
    assert schedules_due(until=moment - timedelta(seconds=1)) == []
    assert schedules_due(until=moment) == [
        (every.pk, moment, 5),
        (schedules[0].pk, moment, None),
        (schedules[1].pk, moment, None),
    ]


def test_a_batch_fires_each_due_schedule_once_in_a_few_statements(
    definition, django_assert_max_num_queries
):
    schedules = hourly(definition, 60, minute=7)
    due = schedules[0].next_fire_at
    ids = [s.pk for s in schedules]
    with django_assert_max_num_queries(15):
        assert schedules_fire(schedule_ids=ids, now=due + timedelta(seconds=0.2)) == 60
    runs = JobScheduleRun.objects.filter(due_at=due)
    assert runs.count() == 60
    assert set(runs.values_list("outcome", flat=True)) == {"submitted"}
    assert Job.objects.filter(schedule_runs__in=runs).distinct().count() == 60
    assert set(Job.objects.values_list("idempotency_key", flat=True)) == {
        f"schedule-{pk}-{due.isoformat()}" for pk in ids
    }
    for schedule in JobSchedule.objects.all():
        assert schedule.last_fire_at == due
        assert schedule.next_fire_at == due + timedelta(hours=1)
    # A redelivered message, or a second beat: nothing more.
    assert schedules_fire(schedule_ids=ids, now=due + timedelta(seconds=0.5)) == 0
    assert JobScheduleRun.objects.count() == Job.objects.count() == 60


def test_a_batch_keeps_the_policies_and_skips_what_is_gone(definition):
    forbid = schedule_create(
        team=definition.team,
        definition=definition,
        fields={"name": "forbid", "cron": "5 * * * *", "concurrency_policy": "forbid"},
    )
    late = schedule_create(
        team=definition.team,
        definition=definition,
        fields={"name": "late", "cron": "5 * * * *", "misfire_policy": "skip"},
    )
    due = forbid.next_fire_at
    assert (
        schedules_fire(schedule_ids=[forbid.pk, late.pk, 999_999], now=due + timedelta(seconds=10))
        == 2
    )
    assert JobScheduleRun.objects.get(schedule=late).outcome == "skipped_misfire"
    assert JobScheduleRun.objects.get(schedule=forbid).outcome == "submitted"
    assert Job.objects.count() == 1


def test_a_batch_late_within_the_grace_runs_each_due_time_and_folds_only_a_misfire(
    definition, settings
):
    settings.SCHEDULE_MISFIRE_GRACE_SECONDS = 5
    every = schedule_create(
        team=definition.team, definition=definition, fields={"name": "every", "interval_seconds": 1}
    )
    first = every.next_fire_at
    # The control worker was busy for 2.5 s: each due time still gets its own run.
    now = first + timedelta(seconds=2.5)
    for _ in range(4):
        schedules_fire(schedule_ids=[every.pk], now=now)
    assert [
        (run.due_at, run.missed, run.catch_up) for run in JobScheduleRun.objects.order_by("due_at")
    ] == [(first + timedelta(seconds=i), 0, False) for i in range(3)]
    # Beat was down for longer than the grace: one catch-up for what it missed.
    now = first + timedelta(seconds=12.5)
    assert schedules_fire(schedule_ids=[every.pk], now=now) == 1
    catch_up = JobScheduleRun.objects.order_by("due_at").last()
    assert (catch_up.due_at, catch_up.missed, catch_up.catch_up) == (
        first + timedelta(seconds=12),
        9,
        True,
    )


def test_an_early_batch_fires_nothing(definition):
    schedules = hourly(definition, 5, minute=9)
    due = schedules[0].next_fire_at
    assert (
        schedules_fire(schedule_ids=[s.pk for s in schedules], now=due - timedelta(seconds=1)) == 0
    )
    assert not JobScheduleRun.objects.exists()
    assert set(JobSchedule.objects.values_list("next_fire_at", flat=True)) == {due}


def sent(broker, queue="control") -> list[list[int]]:
    """The schedule ids of each batch message on a queue (a Redis list), oldest first."""
    messages = [json.loads(raw) for raw in reversed(broker.lrange(queue, 0, -1))]
    return [
        json.loads(base64.b64decode(m["body"]))[1]["schedule_ids"]
        for m in messages
        if m["headers"]["task"] == FIRE_BATCH_TASK
    ]


# Where kombu keeps a queue's messages of priority 6 (LATER_PRIORITY) on Redis.
LATER = f"control\x06\x16{LATER_PRIORITY}"


# Beat closes its database connection between ticks, as a long-running process should.
@pytest.mark.django_db(transaction=True)
def test_beat_sends_what_is_due_a_batch_to_a_message_and_once(
    definition, broker, settings, django_assert_max_num_queries
):
    settings.SCHEDULE_FIRE_BATCH_SIZE = 25
    settings.SCHEDULE_FIRE_IN_FLIGHT_MAX = 100
    schedules = hourly(definition, 60)
    every = schedule_create(
        team=definition.team, definition=definition, fields={"name": "every", "interval_seconds": 5}
    )
    now = timezone.now()
    JobSchedule.objects.exclude(pk=schedules[-1].pk).update(next_fire_at=now - timedelta(seconds=1))
    JobSchedule.objects.filter(pk=schedules[-1].pk).update(next_fire_at=now + timedelta(seconds=30))
    beat = ScheduleBeat(app=celery_app)
    assert not any(name.startswith("jobs.schedule.") for name in beat.schedule)
    with django_assert_max_num_queries(1):
        beat.fire_due_schedules()
    # The every-5-seconds schedule goes ahead of the hourly ones, in batches behind it.
    assert sent(broker) == [[every.pk]]
    assert [len(ids) for ids in sent(broker, LATER)] == [25, 25, 9]
    hourly_ids = sorted(i for ids in sent(broker, LATER) for i in ids)
    assert hourly_ids == sorted(s.pk for s in schedules[:-1])
    # Still due (the control worker has not run them): not sent again...
    assert beat.fire_due_schedules() <= IN_FLIGHT_POLL_SECONDS
    assert len(sent(broker)) + len(sent(broker, LATER)) == 4
    # ...unless the trigger takes longer than SCHEDULE_FIRE_RESEND_SECONDS.
    settings.SCHEDULE_FIRE_RESEND_SECONDS = 0
    beat.fire_due_schedules()
    assert len(sent(broker)) + len(sent(broker, LATER)) == 8
    # Once they are fired, beat sleeps until the next due time, or for max_interval.
    JobSchedule.objects.exclude(pk=schedules[-1].pk).update(next_fire_at=now + timedelta(hours=1))
    assert beat.fire_due_schedules() == beat.max_interval
    JobSchedule.objects.filter(pk=schedules[-1].pk).update(
        next_fire_at=timezone.now() + timedelta(seconds=0.5)
    )
    assert 0 < beat.fire_due_schedules() <= 0.5
    beat.close()


@pytest.mark.django_db(transaction=True)
def test_beat_keeps_only_a_few_batches_of_the_others_in_flight(definition, broker, settings):
    settings.SCHEDULE_FIRE_BATCH_SIZE = 10
    settings.SCHEDULE_FIRE_IN_FLIGHT_MAX = 20
    schedules = hourly(definition, 45)
    every = schedule_create(
        team=definition.team, definition=definition, fields={"name": "every", "interval_seconds": 1}
    )
    due = timezone.now() - timedelta(seconds=1)
    JobSchedule.objects.update(next_fire_at=due)
    beat = ScheduleBeat(app=celery_app)
    beat.fire_due_schedules()
    assert sent(broker) == [[every.pk]]
    assert [len(ids) for ids in sent(broker, LATER)] == [10, 10]
    # None fired yet: no more of them; the quick one, fired and due again, goes at once.
    JobSchedule.objects.filter(pk=every.pk).update(next_fire_at=due + timedelta(seconds=1))
    assert beat.fire_due_schedules() == IN_FLIGHT_POLL_SECONDS
    assert sent(broker) == [[every.pk], [every.pk]]
    assert len(sent(broker, LATER)) == 2
    # The control worker fired the first batch: one more goes.
    first = sent(broker, LATER)[0]
    JobSchedule.objects.filter(pk__in=first).update(next_fire_at=due + timedelta(hours=1))
    beat.fire_due_schedules()
    assert [len(ids) for ids in sent(broker, LATER)] == [10, 10, 10]
    sent_ids = [i for ids in sent(broker, LATER) for i in ids]
    assert sent_ids == [s.pk for s in schedules[:30]]
    beat.close()
