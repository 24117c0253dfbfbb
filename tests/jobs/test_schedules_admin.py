"""The schedule admin goes through the services: its beat entry follows every change."""

import pytest
from django.test import Client
from django_celery_beat.models import PeriodicTask

from accounts.models import User
from jobs.models import JobDefinition, JobSchedule
from jobs.schedules import FIRE_TASK, schedule_create, schedule_fire

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(db):
    user = User.objects.create_superuser("boss", password="correct horse battery")
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def definition(team, default_queue, small_node):
    return JobDefinition.objects.create(
        team=team, name="echo", command=["echo"], queue=default_queue
    )


def form(definition, **fields):
    return {
        "team": definition.team_id,
        "name": "nightly",
        "definition": definition.pk,
        "cron": "",
        "timezone": "UTC",
        "interval_seconds": "",
        "concurrency_policy": "allow",
        "misfire_policy": "run_once",
        "enabled": "on",
        "runs-TOTAL_FORMS": "0",
        "runs-INITIAL_FORMS": "0",
        **fields,
    }


def test_adding_editing_and_deleting_in_the_admin_keeps_one_beat_entry(admin_client, definition):
    response = admin_client.post(
        "/admin/jobs/jobschedule/add/", form(definition, interval_seconds="30")
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    schedule = JobSchedule.objects.get()
    assert PeriodicTask.objects.get(task=FIRE_TASK).interval.every == 30
    response = admin_client.post(
        f"/admin/jobs/jobschedule/{schedule.pk}/change/",
        form(definition, cron="0 3 * * *", timezone="Europe/Berlin"),
    )
    assert response.status_code == 302
    task = PeriodicTask.objects.get(task=FIRE_TASK)
    assert task.interval is None and str(task.crontab.timezone) == "Europe/Berlin"
    response = admin_client.post(f"/admin/jobs/jobschedule/{schedule.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not PeriodicTask.objects.filter(task=FIRE_TASK).exists()


def test_the_admin_names_the_bad_field(admin_client, definition):
    response = admin_client.post(
        "/admin/jobs/jobschedule/add/", form(definition, cron="99 * * * *")
    )
    assert response.status_code == 200
    assert "is not a valid cron expression" in response.content.decode()
    assert not JobSchedule.objects.exists()


def test_the_admin_lists_runs_linked_to_their_jobs(admin_client, definition):
    schedule = schedule_create(
        team=definition.team, definition=definition, fields={"name": "s", "interval_seconds": 5}
    )
    run = schedule_fire(schedule_id=schedule.pk, now=schedule.next_fire_at)
    page = admin_client.get(f"/admin/jobs/jobschedule/{schedule.pk}/change/").content.decode()
    assert f'href="/admin/jobs/job/{run.job_id}/change/"' in page
    assert "Every 5 seconds" in admin_client.get("/admin/jobs/jobschedule/").content.decode()
