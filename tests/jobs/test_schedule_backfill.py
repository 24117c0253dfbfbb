"""Backfill (`POST /api/schedules/{id}/backfill/`, the service and the admin action): one
run per past due time in the range that has none, idempotent, limited, team-isolated."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import Role, User
from accounts.services import team_add_member
from jobs.metrics.figures import schedule_run_figures
from jobs.models import Job, JobDefinition, JobSchedule, JobScheduleRun
from jobs.schedule_backfill import schedule_backfill
from jobs.schedules import schedule_create, schedule_fire, schedules_fire
from tests.conftest import token_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def definition(team, default_queue, small_node):
    return JobDefinition.objects.create(
        team=team, name="true", command=["true"], queue=default_queue
    )


@pytest.fixture
def hourly(definition):
    return schedule_create(
        team=definition.team, definition=definition, fields={"name": "hourly", "cron": "0 * * * *"}
    )


def last_hours(count: int) -> tuple:
    """A range holding the last `count` full hours' due times of "0 * * * *"."""
    end = timezone.now().replace(minute=0, second=0, microsecond=0)
    return end - timedelta(hours=count - 1), end


def backfill(api, schedule, start, end, **extra):
    payload = {"start": start.isoformat(), "end": end.isoformat(), **extra}
    return api.post(f"/api/schedules/{schedule.pk}/backfill/", payload, format="json")


def test_ten_due_times_make_ten_runs_and_repeating_makes_none(api, hourly):
    start, end = last_hours(10)
    response = backfill(api, hourly, start, end)
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["submitted"] == 10 and not body["dry_run"]
    assert [run["outcome"] for run in body["runs"]] == ["backfilled"] * 10
    runs = JobScheduleRun.objects.filter(schedule=hourly).order_by("due_at")
    assert [run.due_at for run in runs] == [start + timedelta(hours=i) for i in range(10)]
    assert set(runs.values_list("outcome", flat=True)) == {"backfilled"}
    assert Job.objects.filter(schedule_runs__in=runs).distinct().count() == 10
    assert {job.idempotency_key for job in Job.objects.all()} == {
        f"schedule-{hourly.pk}-{run.due_at.isoformat()}" for run in runs
    }

    again = backfill(api, hourly, start, end).json()
    assert again["submitted"] == 0 and again["runs"] == []
    assert all(due["already_run"] for due in again["due_times"])
    assert JobScheduleRun.objects.count() == Job.objects.count() == 10


def test_a_dry_run_lists_the_due_times_and_changes_nothing(api, hourly):
    start, end = last_hours(3)
    schedule_backfill(schedule=hourly, start=end, end=end)  # the last one has run
    response = backfill(api, hourly, start, end, dry_run=True)
    assert response.status_code == 200
    assert response.json()["due_times"] == [
        {
            "due_at": (start + timedelta(hours=i)).isoformat().replace("+00:00", "Z"),
            "already_run": i == 2,
        }
        for i in range(3)
    ]
    assert response.json()["submitted"] == 0
    assert JobScheduleRun.objects.count() == Job.objects.count() == 1


def test_a_range_over_the_limit_is_a_400_naming_it(api, hourly, settings):
    settings.SCHEDULE_BACKFILL_MAX = 5
    response = backfill(api, hourly, *last_hours(6))
    assert response.status_code == 400
    assert "SCHEDULE_BACKFILL_MAX (5)" in response.json()["end"][0]
    assert backfill(api, hourly, *last_hours(5)).status_code == 200
    assert JobScheduleRun.objects.count() == 5


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"end": "2020-01-01T00:00:00Z"}, "start"),
        ({"start": "2020-01-01T00:00:00Z", "end": "yesterday"}, "end"),
        ({"start": "2020-01-02T00:00:00Z", "end": "2020-01-01T00:00:00Z"}, "start"),
        ({"start": "2020-01-01T00:00:00Z", "end": "2999-01-01T00:00:00Z"}, "end"),
        (
            {"start": "2020-01-01T00:00:00Z", "end": "2020-01-01T01:00:00Z", "dryrun": True},
            "dryrun",
        ),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_changes_nothing(api, hourly, payload, field):
    response = api.post(f"/api/schedules/{hourly.pk}/backfill/", payload, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert not JobScheduleRun.objects.exists()


def test_another_teams_schedule_is_a_404_and_a_viewer_may_not(outsider_api, team, hourly):
    start, end = last_hours(2)
    assert backfill(outsider_api, hourly, start, end).status_code == 404
    viewer = User.objects.create_user("victor", password="correct horse battery")
    team_add_member(team=team, user=viewer, role=Role.VIEWER)
    assert backfill(token_client(viewer), hourly, start, end).status_code == 403
    assert not JobScheduleRun.objects.exists()


def test_backfilled_runs_are_counted_but_not_as_late(hourly):
    schedule_backfill(schedule=hourly, start=last_hours(5)[0], end=last_hours(5)[1])
    runs, lateness = schedule_run_figures()
    assert runs["backfilled"] == 5
    assert lateness.count == 0


def test_beat_passes_over_a_due_time_a_backfill_ran(definition):
    every = schedule_create(
        team=definition.team,
        definition=definition,
        fields={"name": "minutely", "cron": "* * * * *"},
    )
    together = schedule_create(
        team=definition.team,
        definition=definition,
        fields={"name": "minutely-2", "cron": "* * * * *"},
    )
    # Beat is behind: the last minute is due and not fired yet, and a backfill runs it.
    due = timezone.now().replace(second=0, microsecond=0)
    JobSchedule.objects.update(next_fire_at=due)
    for schedule in (every, together):
        schedule_backfill(schedule=schedule, start=due, end=due)
    assert schedule_fire(schedule_id=every.pk, now=due + timedelta(seconds=0.1)) is None
    assert schedules_fire(schedule_ids=[together.pk], now=due + timedelta(seconds=0.1)) == 0
    assert Job.objects.count() == JobScheduleRun.objects.count() == 2
    for schedule in JobSchedule.objects.all():
        assert schedule.next_fire_at == due + timedelta(minutes=1)


def test_the_admin_action_asks_for_the_range_then_backfills(hourly):
    user = User.objects.create_superuser("boss", password="correct horse battery")
    client = Client()
    client.force_login(user)
    start, end = last_hours(4)
    chosen = {"action": "backfill", "_selected_action": [hourly.pk]}
    page = client.post("/admin/jobs/jobschedule/", chosen)
    assert page.status_code == 200 and 'name="apply"' in page.content.decode()
    form = {"start": start.strftime("%Y-%m-%d %H:%M"), "end": end.strftime("%Y-%m-%d %H:%M")}
    response = client.post(
        "/admin/jobs/jobschedule/", {**chosen, **form, "dry_run": "on", "apply": "1"}
    )
    assert response.status_code == 302
    assert not JobScheduleRun.objects.exists()
    response = client.post(
        "/admin/jobs/jobschedule/", {**chosen, **form, "apply": "1"}, follow=True
    )
    assert "4 runs backfilled" in response.content.decode()
    assert JobScheduleRun.objects.filter(outcome="backfilled").count() == 4
