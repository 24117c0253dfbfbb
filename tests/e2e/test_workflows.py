"""Workflows on a real scheduler, node agents and beat: dependency order, parameters, a
failed step cancelling what needs it, a retry that runs only that step and what follows,
and a template fired by a schedule.

The tests share one platform (two node agents, the scheduler, the control worker and
beat), each with a team of its own (`own_team`, `team_api`)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import (
    Job,
    JobDefinition,
    JobScheduleRun,
    JobStatus,
    Workflow,
    WorkflowStatus,
    WorkflowTemplate,
)
from jobs.schedules import schedule_create
from resources.models import DEFAULT_QUEUE_NAME, Queue
from tests.processes import shared_cluster, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def platform_cluster(django_db_setup, django_db_blocker, tmp_path_factory):
    with shared_cluster(django_db_blocker, tmp_path_factory.mktemp("workflows")) as cluster:
        cluster.start_node("node-a", cpu=2, slots=8)
        cluster.start_node("node-b", cpu=2, slots=8)
        cluster.start_scheduler()
        cluster.start_control_worker()
        cluster.start_beat()
        yield cluster


def inline(*argv):
    return {"command": list(argv), "resources": {"cpu": 0.5, "memory_mb": 64}}


def create(api, steps, **extra):
    response = api.post(
        "/api/workflows/", {"name": "diamond", "steps": steps, **extra}, format="json"
    )
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def wait_ended(workflow_id, timeout=60) -> Workflow:
    return wait_until(
        lambda: (w := Workflow.objects.get(pk=workflow_id)).status != WorkflowStatus.RUNNING and w,
        timeout,
        message=f"workflow {workflow_id} to end",
    )


def steps_of(workflow_id) -> dict[str, Job]:
    return {
        job.workflow_step.name: job
        for job in Job.objects.filter(workflow_id=workflow_id).select_related("workflow_step")
    }


def diamond(tmp_path, c_step):
    out = tmp_path / "out"
    return [
        {
            "name": "a",
            # The parameter is an argv item of its own, handed to the script as $1.
            "job": inline("sh", "-c", f'echo "$1" > {out}-a; sleep 0.3', "sh", "{{ params.word }}"),
        },
        {"name": "b", "job": inline("sleep", "0.3"), "depends_on": ["a"]},
        {**c_step, "name": "c", "depends_on": ["a"]},
        {
            "name": "d",
            "job": inline("sh", "-c", f'echo "$WORKFLOW_STEP $WORKFLOW_UPSTREAM_JOBS" > {out}-d'),
            "depends_on": ["b", "c"],
        },
    ]


def test_a_diamond_runs_in_dependency_order_with_its_parameter(team_api, tmp_path):
    steps = diamond(tmp_path, {"job": inline("sleep", "0.3")})
    workflow_id = create(team_api, steps, parameters={"word": "it's $(not) a shell"})
    assert wait_ended(workflow_id).status == WorkflowStatus.SUCCEEDED
    jobs = steps_of(workflow_id)
    assert {job.status for job in jobs.values()} == {JobStatus.SUCCEEDED}
    a, b, c, d = (jobs[name] for name in "abcd")
    assert a.finished_at <= b.started_at and a.finished_at <= c.started_at
    assert max(b.finished_at, c.finished_at) <= d.started_at
    # Both middle steps ran at once: nothing serialised them but their upstream.
    assert b.started_at < c.finished_at and c.started_at < b.finished_at
    assert (tmp_path / "out-a").read_text() == "it's $(not) a shell\n"
    assert (tmp_path / "out-d").read_text() == f"d {b.id},{c.id}\n"


def test_a_failed_step_cancels_its_dependent_and_retry_runs_only_it_and_after(
    team_api, own_team, tmp_path
):
    definition = JobDefinition.objects.create(
        team=own_team,
        queue=Queue.objects.get(name=DEFAULT_QUEUE_NAME),
        name="step-c",
        command=["sh", "-c", "exit 3"],
        cpu_millis=500,
        memory_mb=64,
    )
    steps = diamond(tmp_path, {"definition": definition.pk})
    workflow_id = create(team_api, steps, parameters={"word": "x"})
    assert wait_ended(workflow_id).status == WorkflowStatus.FAILED
    jobs = steps_of(workflow_id)
    assert jobs["c"].status == JobStatus.FAILED
    assert jobs["d"].status == JobStatus.CANCELLED
    assert (
        jobs["d"].cancel_reason == f"dependency never satisfied: job {jobs['c'].id} (step c) failed"
    )
    assert jobs["d"].started_at is None
    detail = team_api.get(f"/api/workflows/{workflow_id}/").json()
    assert detail["status"] == "failed"
    assert {s["name"]: s["status"] for s in detail["steps"]}["d"] == "cancelled"

    definition.command = ["true"]
    definition.save()
    response = team_api.post(f"/api/workflows/{workflow_id}/retry/")
    assert response.status_code == 200, response.json()
    assert wait_ended(workflow_id).status == WorkflowStatus.SUCCEEDED
    after = steps_of(workflow_id)
    assert {name: job.executions.count() for name, job in after.items()} == {
        "a": 1,
        "b": 1,
        "c": 2,
        "d": 1,
    }
    assert after["c"].finished_at <= after["d"].started_at
    assert after["a"].finished_at == jobs["a"].finished_at  # untouched


def test_a_fan_in_starts_once_when_upstreams_end_on_two_nodes(team_api):
    """Twenty upstreams ending at once on two nodes, in racing transactions: the one step
    after them is released exactly once, after the last of them."""
    middle = [f"m{i}" for i in range(20)]
    steps = [
        {"name": "root", "job": inline("true")},
        *({"name": m, "job": inline("true"), "depends_on": ["root"]} for m in middle),
        {"name": "sink", "job": inline("true"), "depends_on": middle},
    ]
    workflow_id = create(team_api, steps, max_parallel=8)
    assert wait_ended(workflow_id).status == WorkflowStatus.SUCCEEDED
    jobs = steps_of(workflow_id)
    assert jobs["sink"].executions.count() == 1
    assert max(jobs[m].finished_at for m in middle) <= jobs["sink"].started_at


def test_beat_fires_a_workflow_template_with_its_parameters(team_api, own_team, tmp_path):
    out = tmp_path / "day"
    steps = [
        {"name": "a", "job": inline("sh", "-c", f'echo "$1" > {out}', "sh", "{{ params.day }}")},
        {"name": "b", "job": inline("true"), "depends_on": ["a"]},
    ]
    response = team_api.post(
        "/api/workflow-templates/",
        {"name": "nightly", "parameters": {"day": "monday"}, "steps": steps},
        format="json",
    )
    assert response.status_code == 201, response.json()
    template = WorkflowTemplate.objects.get(pk=response.json()["id"])
    run_at = timezone.now() + timedelta(seconds=4)
    schedule_create(
        team=own_team,
        definition=None,
        fields={"name": "once", "workflow_template": template, "run_at": run_at},
    )
    workflow = wait_until(
        lambda: Workflow.objects.filter(template=template).first(), 30, message="the fire"
    )
    assert wait_ended(workflow.pk).status == WorkflowStatus.SUCCEEDED
    assert out.read_text() == "monday\n"
    assert JobScheduleRun.objects.get(workflow=workflow).due_at == run_at
