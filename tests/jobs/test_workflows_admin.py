"""The workflow admin shows a workflow's steps and cancels and retries through the services."""

import pytest
from django.test import Client

from accounts.models import User
from jobs.models import Job, JobStatus, Workflow
from jobs.services.workflows import workflow_create

pytestmark = pytest.mark.django_db

STEP = {"command": ["true"], "cpu_millis": 100, "memory_mb": 100, "gpu": 0}


@pytest.fixture
def admin_client(db):
    client = Client()
    client.force_login(User.objects.create_superuser("boss", password="correct horse battery"))
    return client


@pytest.fixture
def workflow(team, small_node):
    steps = [
        {"name": "first", "job": STEP},
        {"name": "second", "job": STEP, "depends_on": ["first"]},
    ]
    return workflow_create(team=team, name="nightly-flow", steps=steps)


def test_it_lists_workflows_and_shows_their_steps(admin_client, workflow):
    assert b"nightly-flow" in admin_client.get("/admin/jobs/workflow/").content
    page = admin_client.get(f"/admin/jobs/workflow/{workflow.pk}/change/").content.decode()
    assert "first" in page and "second" in page
    job = Job.objects.get(workflow=workflow, name="second")
    assert admin_client.get(f"/admin/jobs/job/{job.pk}/change/").status_code == 200


def test_its_actions_cancel_and_retry(admin_client, workflow):
    for action, status in (("cancel", "cancelled"), ("retry", "running")):
        response = admin_client.post(
            "/admin/jobs/workflow/", {"action": action, "_selected_action": [workflow.pk]}
        )
        assert response.status_code == 302
        assert Workflow.objects.get(pk=workflow.pk).status == status
    assert Job.objects.get(workflow=workflow, name="first").status == JobStatus.PENDING
