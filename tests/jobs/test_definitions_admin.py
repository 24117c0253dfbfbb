"""The definition admin checks a definition as the API does and saves through the
services; a definition that schedules use is not deleted."""

import pytest
from django.test import Client

from accounts.models import User
from jobs.models import JobDefinition
from jobs.schedules import schedule_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(db):
    user = User.objects.create_superuser("boss", password="correct horse battery")
    client = Client()
    client.force_login(user)
    return client


def form(team, queue, **fields):
    return {
        "team": team.pk,
        "name": "echo",
        "kind": "command",
        "command": '["echo", "hi"]',
        "callable": "",
        "env": "{}",
        "parameters": "{}",
        "cpu_millis": "500",
        "memory_mb": "128",
        "gpu": "0",
        "queue": queue.pk,
        "priority": "0",
        "max_retries": "0",
        "retry_backoff_seconds": "10",
        "timeout_seconds": "",
        "node_selector": "{}",
        "tasks": "1",
        **fields,
    }


def test_adding_and_changing_a_definition_in_the_admin(
    admin_client, team, default_queue, small_node
):
    response = admin_client.post("/admin/jobs/jobdefinition/add/", form(team, default_queue))
    assert response.status_code == 302, response.content.decode()[:3000]
    definition = JobDefinition.objects.get()
    assert (definition.team, definition.cpu_millis, definition.command) == (
        team,
        500,
        ["echo", "hi"],
    )
    response = admin_client.post(
        f"/admin/jobs/jobdefinition/{definition.pk}/change/",
        form(team, default_queue, kind="callable", command="[]", callable="jobs.callables.sleep"),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    definition.refresh_from_db()
    assert (definition.kind, definition.callable) == ("callable", "jobs.callables.sleep")
    assert "echo" in admin_client.get("/admin/jobs/jobdefinition/").content.decode()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cpu_millis": "64000"}, "but the largest node has"),
        ({"kind": "callable", "callable": "os.system"}, "is not an allowed callable"),
    ],
)
def test_the_admin_refuses_what_the_api_refuses(
    admin_client, team, default_queue, small_node, fields, message
):
    response = admin_client.post(
        "/admin/jobs/jobdefinition/add/", form(team, default_queue, **fields)
    )
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not JobDefinition.objects.exists()


def test_the_admin_refuses_a_duplicate_name(admin_client, team, default_queue, small_node):
    JobDefinition.objects.create(team=team, name="echo", command=["true"], queue=default_queue)
    response = admin_client.post("/admin/jobs/jobdefinition/add/", form(team, default_queue))
    assert response.status_code == 200
    assert "already has a definition with this name" in response.content.decode()
    assert JobDefinition.objects.count() == 1


def test_the_admin_does_not_delete_a_definition_that_schedules_use(
    admin_client, team, default_queue, small_node
):
    definition = JobDefinition.objects.create(
        team=team, name="echo", command=["true"], queue=default_queue
    )
    schedule_create(team=team, definition=definition, fields={"name": "s", "interval_seconds": 60})
    url = f"/admin/jobs/jobdefinition/{definition.pk}/delete/"
    response = admin_client.post(url, {"post": "yes"})
    # Django's confirmation page lists the schedule as what stands in the way.
    assert response.status_code == 200
    assert "protected related objects" in response.content.decode()
    assert JobDefinition.objects.filter(pk=definition.pk).exists()
    spare = JobDefinition.objects.create(
        team=team, name="spare", command=["true"], queue=default_queue
    )
    response = admin_client.post(f"/admin/jobs/jobdefinition/{spare.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not JobDefinition.objects.filter(pk=spare.pk).exists()
