"""The web UI pages: login required, and only the user's teams' jobs."""

import pytest

from jobs.models import Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def job(team, default_queue):
    return Job.objects.create(team=team, queue=default_queue, name="visible-job", command=["true"])


def test_the_dashboard_needs_a_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_the_dashboard_shows_the_users_jobs_and_the_nodes(client, member, job, small_node):
    client.force_login(member)
    page = client.get("/").content.decode()
    assert "visible-job" in page
    assert "static-1" in page


def test_another_teams_job_page_is_404_and_not_on_the_dashboard(client, outsider, job):
    client.force_login(outsider)
    assert "visible-job" not in client.get("/").content.decode()
    assert client.get(f"/jobs/{job.pk}/").status_code == 404


def test_the_job_page_shows_the_job(client, member, job):
    client.force_login(member)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "visible-job" in page
    assert "Not placed on a node yet." in page
