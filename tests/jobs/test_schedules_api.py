"""/api/schedules/: validation (400 naming the field), tenancy, pause and resume, the
preview of next fire times, and the runs listed with their jobs."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from accounts.models import Role, User
from accounts.services import team_add_member
from jobs.models import JobDefinition, JobSchedule
from jobs.schedules import FIRE_TASK, schedule_fire
from tests.conftest import token_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def definition(team, default_queue, small_node):
    return JobDefinition.objects.create(
        team=team, name="echo", command=["echo", "hi"], queue=default_queue
    )


@pytest.fixture
def other_definition(other_team, default_queue):
    return JobDefinition.objects.create(
        team=other_team, name="theirs", command=["true"], queue=default_queue
    )


@pytest.fixture
def viewer_api(team):
    user = User.objects.create_user("victor", password="correct horse battery")
    team_add_member(team=team, user=user, role=Role.VIEWER)
    return token_client(user)


def create(api, definition, **fields):
    payload = {"name": "nightly", "definition": definition.pk, **fields}
    return api.post("/api/schedules/", payload, format="json")


def test_it_creates_an_interval_schedule_with_its_beat_entry(api, definition):
    response = create(api, definition, interval_seconds=60)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["team"] == "blue" and body["kind"] == "interval" and body["enabled"]
    assert body["description"] == "Every 60 seconds"
    assert body["concurrency_policy"] == "allow" and body["misfire_policy"] == "run_once"
    assert body["next_fire_at"] is not None and body["recent_runs"] == []
    task = PeriodicTask.objects.get(task=FIRE_TASK)
    assert task.interval.every == 60 and task.enabled


def test_it_describes_a_cron_schedule_in_words(api, definition):
    response = create(api, definition, cron="0 9 * * 1-5", timezone="Europe/Berlin")
    assert response.status_code == 201, response.json()
    assert response.json()["description"] == ("At 09:00 AM, Monday through Friday (Europe/Berlin)")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * *"}, "cron"),
        ({"cron": "0 9 * * *", "timezone": "Europe/Atlantis"}, "timezone"),
        ({"interval_seconds": 0}, "interval_seconds"),
        ({"interval_seconds": -5}, "interval_seconds"),
        (
            {
                "interval_seconds": 60,
                "start_at": "2030-01-02T00:00:00Z",
                "end_at": "2030-01-01T00:00:00Z",
            },
            "end_at",
        ),
        ({"interval_seconds": 60, "cron": "* * * * *"}, "cron"),
        ({}, "interval_seconds"),
        ({"run_at": "2030-01-01T00:00:00Z", "end_at": "2030-02-01T00:00:00Z"}, "run_at"),
        ({"interval_seconds": 60, "concurrency_policy": "sometimes"}, "concurrency_policy"),
        ({"interval_seconds": 60, "every": 5}, "every"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_changes_nothing(api, definition, fields, field):
    response = create(api, definition, **fields)
    assert response.status_code == 400
    assert field in response.json(), response.json()
    assert not JobSchedule.objects.exists()
    assert not PeriodicTask.objects.filter(task=FIRE_TASK).exists()


def test_a_duplicate_name_in_the_team_is_a_400(api, definition):
    assert create(api, definition, interval_seconds=60).status_code == 201
    response = create(api, definition, interval_seconds=30)
    assert response.status_code == 400 and "name" in response.json()


def test_another_teams_definition_is_refused(api, definition, other_definition):
    response = create(api, other_definition, interval_seconds=60)
    assert response.status_code == 400 and "definition" in response.json()


def test_another_teams_schedule_answers_404(api, outsider_api, definition):
    pk = create(api, definition, interval_seconds=60).json()["id"]
    assert outsider_api.get(f"/api/schedules/{pk}/").status_code == 404
    assert outsider_api.patch(f"/api/schedules/{pk}/", {"name": "x"}).status_code == 404
    assert outsider_api.post(f"/api/schedules/{pk}/pause/").status_code == 404
    assert outsider_api.delete(f"/api/schedules/{pk}/").status_code == 404
    assert outsider_api.get(f"/api/schedules/{pk}/next_runs/").status_code == 404
    assert outsider_api.get("/api/schedules/").json()["count"] == 0
    assert JobSchedule.objects.get().enabled


def test_a_viewer_reads_but_may_not_change(api, viewer_api, definition):
    pk = create(api, definition, interval_seconds=60).json()["id"]
    assert viewer_api.get(f"/api/schedules/{pk}/").status_code == 200
    assert viewer_api.post(f"/api/schedules/{pk}/pause/").status_code == 403
    assert viewer_api.delete(f"/api/schedules/{pk}/").status_code == 403
    assert create(viewer_api, definition, name="mine", interval_seconds=5).status_code == 403
    assert JobSchedule.objects.get().enabled


def test_pause_resume_edit_and_delete_keep_the_beat_entry_in_step(api, definition):
    pk = create(api, definition, interval_seconds=60).json()["id"]
    paused = api.post(f"/api/schedules/{pk}/pause/").json()
    assert not paused["enabled"] and not PeriodicTask.objects.get(task=FIRE_TASK).enabled
    assert api.post(f"/api/schedules/{pk}/resume/").json()["enabled"]
    assert PeriodicTask.objects.get(task=FIRE_TASK).enabled
    response = api.patch(
        f"/api/schedules/{pk}/",
        {"interval_seconds": None, "cron": "*/5 * * * *", "timezone": "Asia/Tokyo"},
        format="json",
    )
    assert response.status_code == 200, response.json()
    task = PeriodicTask.objects.get(task=FIRE_TASK)
    assert task.interval is None and str(task.crontab.timezone) == "Asia/Tokyo"
    bad = api.patch(f"/api/schedules/{pk}/", {"cron": "not cron"}, format="json")
    assert bad.status_code == 400 and "cron" in bad.json()
    assert JobSchedule.objects.get().cron == "*/5 * * * *"
    assert api.delete(f"/api/schedules/{pk}/").status_code == 204
    assert not JobSchedule.objects.exists()
    assert not PeriodicTask.objects.filter(task=FIRE_TASK).exists()


def test_next_runs_preview_follows_berlin_across_the_spring_change(api, definition):
    pk = create(api, definition, cron="30 2 * * *", timezone="Europe/Berlin").json()["id"]
    response = api.get(
        f"/api/schedules/{pk}/next_runs/", {"count": 4, "after": "2027-03-26T12:00:00Z"}
    )
    assert response.status_code == 200, response.json()
    runs = response.json()["next_runs"]
    # 2027-03-28 02:00 CET jumps to 03:00 CEST: that night's run is at 03:00 local.
    assert [run["at"] for run in runs] == [
        "2027-03-27T01:30:00Z",
        "2027-03-28T01:00:00Z",
        "2027-03-29T00:30:00Z",
        "2027-03-30T00:30:00Z",
    ]
    assert [run["local"] for run in runs[:3]] == [
        "2027-03-27T02:30:00+01:00",
        "2027-03-28T03:00:00+02:00",
        "2027-03-29T02:30:00+02:00",
    ]


def test_next_runs_refuses_a_bad_count(api, definition):
    pk = create(api, definition, interval_seconds=60).json()["id"]
    for count in ("0", "101", "x"):
        response = api.get(f"/api/schedules/{pk}/next_runs/", {"count": count})
        assert response.status_code == 400 and "count" in response.json()
    assert len(api.get(f"/api/schedules/{pk}/next_runs/").json()["next_runs"]) == 5


def test_runs_are_listed_with_links_to_their_jobs(api, definition):
    pk = create(api, definition, interval_seconds=60).json()["id"]
    schedule = JobSchedule.objects.get(pk=pk)
    run = schedule_fire(schedule_id=pk, now=schedule.next_fire_at + timedelta(seconds=0.1))
    runs = api.get(f"/api/schedules/{pk}/runs/").json()["results"]
    assert runs[0]["job"] == run.job_id and runs[0]["job_url"] == f"/api/jobs/{run.job_id}/"
    assert runs[0]["outcome"] == "submitted" and runs[0]["job_status"] == "pending"
    assert api.get(f"/api/schedules/{pk}/").json()["recent_runs"][0]["job"] == run.job_id
    assert api.get(runs[0]["job_url"]).status_code == 200


def test_the_list_takes_a_fixed_number_of_queries(api, definition, django_assert_num_queries):
    for i in range(5):
        create(api, definition, name=f"s{i}", interval_seconds=60 + i)
    # Token, count, page.
    with django_assert_num_queries(3):
        body = api.get("/api/schedules/").json()
    assert body["count"] == 5
    assert {s["definition_name"] for s in body["results"]} == {"echo"}


def test_a_one_off_that_ran_cannot_be_resumed(api, definition):
    run_at = timezone.now() + timedelta(minutes=1)
    pk = create(api, definition, run_at=run_at.isoformat()).json()["id"]
    schedule_fire(schedule_id=pk, now=run_at + timedelta(seconds=1))
    api.post(f"/api/schedules/{pk}/pause/")
    response = api.post(f"/api/schedules/{pk}/resume/")
    assert response.status_code == 400 and "status" in response.json()
