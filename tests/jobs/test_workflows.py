"""Workflows through the API and the services: checked as a whole, created at once,
released step by step as upstreams end, cancelled and retried."""

import pytest

from jobs.models import (
    Job,
    JobDefinition,
    JobDependency,
    JobStatus,
    PendingReason,
    Workflow,
    WorkflowStep,
)
from jobs.scheduling.cycle import place_pending_jobs
from jobs.services.executions import execution_claim, execution_finish
from resources.models import DEFAULT_QUEUE_NAME, Queue

pytestmark = pytest.mark.django_db


def step(name, *depends_on, command=("true",), **extra):
    return {
        "name": name,
        "job": {"command": list(command)},
        "depends_on": list(depends_on),
        **extra,
    }


DIAMOND = [step("a", command=("echo", "day={{ params.day }}")), step("b", "a"), step("c", "a")]
DIAMOND.append(step("d", "b", "c"))


def create(api, steps, **extra):
    response = api.post(
        "/api/workflows/",
        {"name": "wf", "parameters": {"day": "2030-01-01"}, "steps": steps, **extra},
        format="json",
    )
    assert response.status_code == 201, response.json()
    return response.json()


def jobs_of(body) -> dict[str, Job]:
    return {s["name"]: Job.objects.get(pk=s["job"]) for s in body["steps"]}


def finish(job: Job, node, *, exit_code=0) -> None:
    """Place the job (and whatever else is ready), claim and finish it as its node would."""
    place_pending_jobs(batch_size=100)
    job.refresh_from_db()
    assert job.status == JobStatus.RESERVED, (job.name, job.status, job.pending_reason)
    token = job.last_execution.token
    assert execution_claim(token=token, node_id=node.id) is not None
    execution_finish(token=token, exit_code=exit_code, error="" if exit_code == 0 else "boom")


def status(job: Job) -> tuple[str, str]:
    job.refresh_from_db()
    return job.status, job.pending_reason


def test_it_makes_every_step_s_job_with_its_environment_and_parameters(api, small_node):
    body = create(api, DIAMOND)
    assert body["status"] == "running" and body["step_count"] == 4
    jobs = jobs_of(body)
    assert jobs["a"].command == ["echo", "day=2030-01-01"]
    assert jobs["d"].env == {
        "WORKFLOW_ID": str(body["id"]),
        "WORKFLOW_STEP": "d",
        "WORKFLOW_UPSTREAM_JOBS": f"{jobs['b'].id},{jobs['c'].id}",
    }
    assert status(jobs["a"]) == (JobStatus.PENDING, PendingReason.NONE)
    for held in "bcd":
        assert status(jobs[held]) == (JobStatus.PENDING, PendingReason.WAITING_DEPENDENCIES)
    assert JobDependency.objects.filter(job=jobs["d"]).count() == 2
    assert api.get(f"/api/jobs/{jobs['d'].id}/").json()["workflow"] == body["id"]


def test_a_parameter_goes_in_as_plain_text(api, small_node):
    body = create(
        api,
        [step("a", command=("echo", "{{ params.day }}"))],
        parameters={"day": "$(rm -rf /); `id`"},
    )
    assert jobs_of(body)["a"].command == ["echo", "$(rm -rf /); `id`"]


@pytest.mark.parametrize(
    ("steps", "named"),
    [
        ([step("a", "b"), step("b", "a")], "'a', 'b' form a cycle"),
        ([step("a"), step("b", "nowhere")], "Step 'b' depends on unknown step 'nowhere'"),
        ([step("a"), step("a")], "Step 'a': the name is used twice"),
        ([step("a", command=("echo", "{{ params.nope }}"))], "Step 'a' uses {{ params.nope }}"),
    ],
)
def test_a_bad_graph_is_a_400_naming_the_step_and_nothing_is_made(api, small_node, steps, named):
    response = api.post("/api/workflows/", {"name": "wf", "steps": steps}, format="json")
    assert response.status_code == 400
    assert named in str(response.json())
    assert not Workflow.objects.exists() and not Job.objects.exists()


def test_another_team_s_definition_is_a_400_and_nothing_is_made(api, small_node, other_team):
    theirs = JobDefinition.objects.create(
        team=other_team,
        queue=Queue.objects.get(name=DEFAULT_QUEUE_NAME),
        name="theirs",
        command=["true"],
    )
    response = api.post(
        "/api/workflows/",
        {"name": "wf", "steps": [step("a"), {"name": "b", "definition": theirs.pk}]},
        format="json",
    )
    assert response.status_code == 400
    assert response.json() == {"steps": [f"Step 'b': no definition {theirs.pk} in team blue."]}
    assert not Workflow.objects.exists() and not Job.objects.exists()


def test_steps_run_in_order_and_the_workflow_succeeds(api, small_node, broker):
    body = create(api, DIAMOND)
    jobs = jobs_of(body)
    finish(jobs["a"], small_node)
    assert status(jobs["b"]) == status(jobs["c"]) == (JobStatus.PENDING, "")
    assert status(jobs["d"])[1] == PendingReason.WAITING_DEPENDENCIES
    finish(jobs["b"], small_node)
    assert status(jobs["d"])[1] == PendingReason.WAITING_DEPENDENCIES
    finish(jobs["c"], small_node)
    finish(jobs["d"], small_node)
    assert api.get(f"/api/workflows/{body['id']}/").json()["status"] == "succeeded"


def test_a_failed_step_cancels_what_needs_it_and_retry_runs_it_and_downstream_only(
    api, small_node, broker, team
):
    definition = JobDefinition.objects.create(
        team=team, queue=Queue.objects.get(name=DEFAULT_QUEUE_NAME), name="c", command=["false"]
    )
    steps = [*DIAMOND[:2], {"name": "c", "definition": definition.pk, "depends_on": ["a"]}]
    body = create(api, [*steps, DIAMOND[3]])
    jobs = jobs_of(body)
    finish(jobs["a"], small_node)
    finish(jobs["b"], small_node)
    finish(jobs["c"], small_node, exit_code=1)
    jobs["d"].refresh_from_db()
    assert jobs["d"].status == JobStatus.CANCELLED
    assert (
        jobs["d"].cancel_reason == f"dependency never satisfied: job {jobs['c'].id} (step c) failed"
    )
    assert Workflow.objects.get(pk=body["id"]).status == "failed"

    definition.command = ["echo", "fixed"]
    definition.save()
    retried = api.post(f"/api/workflows/{body['id']}/retry/").json()
    assert retried["status"] == "running"
    assert status(jobs["c"]) == (JobStatus.PENDING, "")
    assert status(jobs["d"]) == (JobStatus.PENDING, PendingReason.WAITING_DEPENDENCIES)
    assert status(jobs["a"])[0] == status(jobs["b"])[0] == JobStatus.SUCCEEDED
    jobs["c"].refresh_from_db()
    assert jobs["c"].command == ["echo", "fixed"]
    finish(jobs["c"], small_node)
    finish(jobs["d"], small_node)
    assert Workflow.objects.get(pk=body["id"]).status == "succeeded"
    assert api.post(f"/api/workflows/{body['id']}/retry/").status_code == 400


def test_trigger_rules_decide_on_the_upstreams_outcomes(api, small_node, broker):
    body = create(
        api,
        [
            step("a"),
            step("on_failure", "a", trigger_rule="any_failed"),
            step("always", "a", trigger_rule="all_finished"),
            step("none_failed", "a", trigger_rule="none_failed"),
        ],
    )
    jobs = jobs_of(body)
    finish(jobs["a"], small_node, exit_code=2)
    assert status(jobs["on_failure"]) == (JobStatus.PENDING, "")
    assert status(jobs["always"]) == (JobStatus.PENDING, "")
    assert status(jobs["none_failed"])[0] == JobStatus.CANCELLED


def test_max_parallel_holds_ready_steps_back(api, small_node, broker):
    body = create(api, [step(f"s{i}") for i in range(5)], max_parallel=2)
    jobs = list(jobs_of(body).values())
    assert [status(j)[1] for j in jobs].count(PendingReason.NONE) == 2
    first = next(j for j in jobs if status(j)[1] == PendingReason.NONE)
    finish(first, small_node)
    active = [j for j in jobs if status(j) != (JobStatus.PENDING, "waiting_dependencies")]
    assert len([j for j in active if j.status != JobStatus.SUCCEEDED]) == 2


def test_cancel_ends_every_unfinished_step(api, small_node, broker):
    body = create(api, DIAMOND)
    jobs = jobs_of(body)
    place_pending_jobs(batch_size=100)
    answer = api.post(f"/api/workflows/{body['id']}/cancel/").json()
    assert answer["status"] == "cancelled"
    assert {s["status"] for s in answer["steps"]} == {"cancelled"}
    assert all(status(j)[0] == JobStatus.CANCELLED for j in jobs.values())
    assert api.post(f"/api/workflows/{body['id']}/cancel/").status_code == 400
    retried = api.post(f"/api/workflows/{body['id']}/retry/").json()
    assert retried["status"] == "running"
    assert status(jobs["a"]) == (JobStatus.PENDING, "")


def test_the_list_filters_and_hides_other_teams(api, outsider_api, small_node):
    create(api, DIAMOND)
    assert [
        w["name"] for w in api.get("/api/workflows/", {"status": "running"}).json()["results"]
    ] == ["wf"]
    assert api.get("/api/workflows/", {"status": "failed"}).json()["results"] == []
    assert outsider_api.get("/api/workflows/").json()["results"] == []
    assert WorkflowStep.objects.count() == 4


def test_the_list_counts_each_workflows_steps_in_a_fixed_number_of_queries(
    api, small_node, django_assert_max_num_queries
):
    create(api, DIAMOND)
    create(api, [step("one")], name="single")

    def listed() -> list:
        return api.get("/api/workflows/").json()["results"]

    with django_assert_max_num_queries(12) as few:
        assert [(w["name"], w["step_count"]) for w in listed()] == [("single", 1), ("wf", 4)]
    queries = len(few)
    for i in range(20):
        create(api, [step("a"), step("b", "a")], name=f"two-{i}")
    with django_assert_max_num_queries(queries):
        found = listed()
    assert [w["step_count"] for w in found] == [2] * 20 + [1, 4]


def test_the_jobs_list_filters_by_workflow(api, small_node):
    body = create(api, DIAMOND)
    create(api, [step("other")])
    listed = api.get("/api/jobs/", {"workflow": body["id"]}).json()["results"]
    assert sorted(j["name"] for j in listed) == ["a", "b", "c", "d"]
