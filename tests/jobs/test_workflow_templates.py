"""Workflow templates: saved, checked, submitted with parameters, and fired by schedules."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import Job, JobScheduleRun, Workflow, WorkflowTemplate
from jobs.schedules import schedule_create, schedule_fire

pytestmark = pytest.mark.django_db

STEPS = [
    {"name": "extract", "job": {"command": ["echo", "{{ params.day }}"]}},
    {"name": "load", "job": {"command": ["true"]}, "depends_on": ["extract"]},
]


def save(api, **extra):
    body = {"name": "nightly", "parameters": {"day": "today"}, "steps": STEPS, **extra}
    response = api.post("/api/workflow-templates/", body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def test_it_is_submitted_with_parameters_over_its_defaults(api, small_node):
    template = save(api, max_parallel=1)
    response = api.post(
        f"/api/workflow-templates/{template['id']}/submit/",
        {"parameters": {"day": "2030-01-01"}},
        format="json",
    )
    assert response.status_code == 201, response.json()
    workflow = Workflow.objects.get(pk=response.json()["id"])
    assert workflow.template_id == template["id"] and workflow.max_parallel == 1
    assert workflow.parameters == {"day": "2030-01-01"}
    assert Job.objects.get(workflow=workflow, name="extract").command == ["echo", "2030-01-01"]
    defaults = api.post(f"/api/workflow-templates/{template['id']}/submit/", {}, format="json")
    extract = Job.objects.get(workflow_id=defaults.json()["id"], name="extract")
    assert extract.command == ["echo", "today"]


def test_its_steps_are_checked_when_it_is_saved(api, small_node):
    response = api.post(
        "/api/workflow-templates/",
        {
            "name": "bad",
            "steps": [{"name": "a", "job": {"command": ["true"]}, "depends_on": ["z"]}],
        },
        format="json",
    )
    assert response.status_code == 400
    assert response.json() == {"steps": ["Step 'a' depends on unknown step 'z'."]}
    assert not WorkflowTemplate.objects.exists()
    template = save(api)
    renamed = api.patch(
        f"/api/workflow-templates/{template['id']}/", {"name": "renamed"}, format="json"
    )
    assert renamed.status_code == 200 and renamed.json()["name"] == "renamed"
    assert api.post(
        "/api/workflow-templates/", {"name": "renamed", "steps": STEPS}, format="json"
    ).json() == {"name": ["The team already has a workflow template with this name."]}


def test_a_schedule_fires_it_once_per_due_time(api, small_node, team, broker):
    template = WorkflowTemplate.objects.get(pk=save(api)["id"])
    run_at = timezone.now() + timedelta(seconds=60)
    schedule = schedule_create(
        team=team,
        definition=None,
        fields={"name": "once", "workflow_template": template, "run_at": run_at},
    )
    run = schedule_fire(schedule_id=schedule.pk, now=run_at + timedelta(seconds=1))
    assert run.outcome == "submitted" and run.workflow.template == template
    assert schedule_fire(schedule_id=schedule.pk, now=run_at + timedelta(seconds=2)) is None
    assert Workflow.objects.count() == JobScheduleRun.objects.count() == 1
    # Used by a schedule, it cannot be deleted.
    response = api.delete(f"/api/workflow-templates/{template.pk}/")
    assert response.status_code == 400 and "schedules" in response.json()


def test_a_schedule_of_it_is_made_through_the_api(api, small_node):
    template = save(api)
    response = api.post(
        "/api/schedules/",
        {"name": "hourly", "workflow_template": template["id"], "interval_seconds": 3600},
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["workflow_template"] == template["id"]
    assert response.json()["definition"] is None
    both = api.post("/api/schedules/", {"name": "none", "interval_seconds": 60}, format="json")
    assert both.status_code == 400 and "definition" in both.json()


def test_a_backfill_of_its_schedule_makes_one_workflow_per_due_time(api, small_node, team, broker):
    template = WorkflowTemplate.objects.get(pk=save(api)["id"])
    schedule = schedule_create(
        team=team,
        definition=None,
        fields={"name": "hourly", "workflow_template": template, "cron": "0 * * * *"},
    )
    end = timezone.now().replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(hours=2)
    body = {"start": start.isoformat(), "end": end.isoformat()}
    response = api.post(f"/api/schedules/{schedule.pk}/backfill/", body, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["submitted"] == 3
    runs = JobScheduleRun.objects.filter(schedule=schedule)
    assert set(runs.values_list("outcome", flat=True)) == {"backfilled"}
    assert Workflow.objects.filter(template=template).count() == 3
    assert {run.workflow_id for run in runs} == set(Workflow.objects.values_list("pk", flat=True))
    again = api.post(f"/api/schedules/{schedule.pk}/backfill/", body, format="json")
    assert again.json()["submitted"] == 0 and Workflow.objects.count() == 3
