"""Dependencies on jobs: submission, release and cancel as upstreams change, re-arming."""

import pytest
from django.db import IntegrityError, transaction

from jobs.models import Job, JobDependency, JobStatus, PendingReason
from jobs.scheduling.cycle import place_pending_jobs
from jobs.services.executions import execution_claim, execution_finish
from tests.jobs.making import submit

pytestmark = pytest.mark.django_db


def run(job_id: int, node, *, exit_code: int = 0) -> None:
    """Place, claim and finish the job as its node would."""
    place_pending_jobs(batch_size=100)
    token = Job.objects.get(pk=job_id).last_execution.token
    assert execution_claim(token=token, node_id=node.id) is not None
    execution_finish(token=token, exit_code=exit_code, error="" if exit_code == 0 else "boom")


def job(job_id: int) -> Job:
    return Job.objects.get(pk=job_id)


def test_it_waits_held_and_shows_its_dependencies(api, small_node):
    upstream = submit(api, name="up")
    response = api.post(
        "/api/jobs/",
        {"name": "down", "command": ["true"], "depends_on": [{"job": upstream}]},
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "pending"
    assert body["pending_reason"] == "waiting_dependencies"
    assert body["depends_on"] == [{"job": upstream, "on": "succeeded"}]
    assert body["on_unsatisfied"] == "cancel"
    listed = api.get("/api/jobs/", {"name": "down"}).json()["results"][0]
    assert listed["depends_on"] == [{"job": upstream, "on": "succeeded"}]
    # A scheduling cycle places the upstream only: the held job is no candidate.
    result = place_pending_jobs(batch_size=100)
    assert result.considered == 1
    assert job(body["id"]).status == JobStatus.PENDING


@pytest.mark.parametrize("whose", ["another team's", "missing"])
def test_a_job_of_another_team_or_none_is_a_400_and_nothing_is_made(
    api, outsider_api, small_node, whose
):
    other = submit(outsider_api, name="theirs") if whose == "another team's" else 999999
    before = Job.objects.count()
    response = api.post(
        "/api/jobs/",
        {"name": "down", "command": ["true"], "depends_on": [{"job": other}]},
        format="json",
    )
    assert response.status_code == 400
    assert list(response.json()) == ["depends_on"]
    assert Job.objects.count() == before
    assert not JobDependency.objects.exists()


def test_a_bad_condition_is_a_400(api, small_node):
    upstream = submit(api, name="up")
    response = api.post(
        "/api/jobs/",
        {"name": "d", "command": ["true"], "depends_on": [{"job": upstream, "on": "soon"}]},
        format="json",
    )
    assert response.status_code == 400
    assert "depends_on" in response.json()


def test_the_database_refuses_a_self_dependency_a_repeated_pair_and_a_bad_condition(
    api, small_node
):
    a, b = submit(api, name="a"), submit(api, name="b")
    JobDependency.objects.create(job_id=b, upstream_id=a)
    for row in (
        {"job_id": a, "upstream_id": a},
        {"job_id": b, "upstream_id": a},
        {"job_id": a, "upstream_id": b, "on": "later"},
    ):
        with pytest.raises(IntegrityError), transaction.atomic():
            JobDependency.objects.create(**row)


def test_it_is_released_when_every_upstream_succeeded(api, small_node, broker):
    a, b = submit(api, name="a"), submit(api, name="b")
    down = submit(api, name="down", depends_on=[{"job": a}, {"job": b, "on": "finished"}])
    run(a, small_node)
    assert job(down).pending_reason == PendingReason.WAITING_DEPENDENCIES
    run(b, small_node, exit_code=3)  # finished, however: met
    assert job(down).status == JobStatus.PENDING
    assert job(down).pending_reason == PendingReason.NONE
    assert place_pending_jobs(batch_size=100).placed == 1


def test_an_upstream_that_failed_cancels_its_dependents_on_down(api, small_node, broker):
    a = submit(api, name="a")
    b = submit(api, name="b", depends_on=[{"job": a}])
    c = submit(api, name="c", depends_on=[{"job": b}])
    patient = submit(api, name="patient", depends_on=[{"job": a}], on_unsatisfied="wait")
    on_failure = submit(api, name="cleanup", depends_on=[{"job": a, "on": "failed"}])
    run(a, small_node, exit_code=1)
    assert (job(b).status, job(b).cancel_reason) == (
        JobStatus.CANCELLED,
        f"dependency never satisfied: job {a} (a) failed",
    )
    assert job(c).cancel_reason == f"dependency never satisfied: job {b} (b) cancelled"
    assert job(patient).pending_reason == PendingReason.WAITING_DEPENDENCIES
    assert (job(on_failure).status, job(on_failure).pending_reason) == (JobStatus.PENDING, "")
    detail = api.get(f"/api/jobs/{c}/").json()
    assert detail["cancel_reason"].startswith("dependency never satisfied: job")
    # Each cancel is in the dependent's timeline, with its reason.
    timeline = api.get(f"/api/jobs/{c}/events/").json()
    assert [(e["type"], e["message"]) for e in timeline[-1:]] == [
        ("job.cancelled", f"dependency never satisfied: job {b} (b) cancelled")
    ]


def test_requeuing_the_upstream_re_arms_the_dependents_it_cancelled(api, small_node, broker):
    a = submit(api, name="a")
    b = submit(api, name="b", depends_on=[{"job": a}])
    c = submit(api, name="c", depends_on=[{"job": b}])
    run(a, small_node, exit_code=1)
    assert api.post(f"/api/jobs/{a}/retry/").status_code == 200
    for waiting in (b, c):
        assert (job(waiting).status, job(waiting).pending_reason, job(waiting).cancel_reason) == (
            JobStatus.PENDING,
            PendingReason.WAITING_DEPENDENCIES,
            "",
        )
    run(a, small_node)
    assert job(b).pending_reason == PendingReason.NONE
    run(b, small_node)
    run(c, small_node)
    assert job(c).status == JobStatus.SUCCEEDED


def test_started_is_met_by_the_claim(api, small_node, broker):
    a = submit(api, name="a")
    after = submit(api, name="after", depends_on=[{"job": a, "on": "started"}])
    token = place_pending_jobs(batch_size=100).tokens[0]
    assert job(after).pending_reason == PendingReason.WAITING_DEPENDENCIES
    execution_claim(token=token, node_id=small_node.id)
    assert job(after).pending_reason == PendingReason.NONE


def test_an_upstream_already_ended_decides_at_submission(api, small_node, broker):
    a = submit(api, name="a")
    run(a, small_node)
    ready = submit(api, name="ready", depends_on=[{"job": a}])
    never = submit(api, name="never", depends_on=[{"job": a, "on": "failed"}])
    assert (job(ready).status, job(ready).pending_reason) == (JobStatus.PENDING, "")
    assert job(never).status == JobStatus.CANCELLED
    assert job(never).cancel_reason == f"dependency never satisfied: job {a} (a) succeeded"


def test_cancelling_an_upstream_by_hand_cancels_its_dependents(api, small_node):
    a = submit(api, name="a")
    b = submit(api, name="b", depends_on=[{"job": a}])
    api.post(f"/api/jobs/{a}/cancel/")
    assert job(b).cancel_reason == f"dependency never satisfied: job {a} (a) cancelled"
