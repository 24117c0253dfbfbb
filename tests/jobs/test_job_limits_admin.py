"""Concurrency limits in the admin (saved through the services), and the pages of array
jobs, their tasks and jobs with deadlines."""

import pytest

from jobs.models import ConcurrencyLimit, Job
from tests.jobs.making import submit

pytestmark = pytest.mark.django_db


def test_a_limit_is_added_changed_refused_twice_and_deleted_in_the_admin(admin_client, team):
    url = "/admin/jobs/concurrencylimit/"
    response = admin_client.post(f"{url}add/", {"team": team.pk, "key": "db", "max_running": 2})
    assert response.status_code == 302, response.content.decode()[:2000]
    limit = ConcurrencyLimit.objects.get()
    response = admin_client.post(f"{url}{limit.pk}/change/", {"key": "db", "max_running": 4})
    assert response.status_code == 302
    assert ConcurrencyLimit.objects.get().max_running == 4
    again = admin_client.post(f"{url}add/", {"team": team.pk, "key": "db", "max_running": 1})
    assert again.status_code == 200  # the form again, with the error
    assert ConcurrencyLimit.objects.count() == 1
    bad = admin_client.post(f"{url}add/", {"team": team.pk, "key": "x", "max_running": -1})
    assert bad.status_code == 200 and ConcurrencyLimit.objects.count() == 1
    assert admin_client.get(url).status_code == 200
    response = admin_client.post(f"{url}{limit.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not ConcurrencyLimit.objects.exists()


def test_array_jobs_and_their_tasks_show_in_the_admin(admin_client, api, small_node):
    array_id = submit(api, array={"count": 2, "parallelism": 1}, deadline="2099-01-01T00:00:00Z")
    task = Job.objects.filter(array_parent_id=array_id).first()
    for pk in (array_id, task.pk):
        page = admin_client.get(f"/admin/jobs/job/{pk}/change/")
        assert page.status_code == 200
    assert "2099" in admin_client.get(f"/admin/jobs/job/{array_id}/change/").content.decode()
