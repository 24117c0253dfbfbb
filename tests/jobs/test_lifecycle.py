"""Cancel, requeue and acknowledge, through the API and the services."""

import pytest
from django.utils import timezone

from accounts.models import Role, User
from accounts.services import team_add_member
from jobs.models import ExecutionStatus, Job, JobStatus
from jobs.scheduling.cycle import place_pending_jobs
from jobs.services.executions import execution_claim, execution_finish
from resources.models import AllocationStatus
from tests.conftest import token_client
from tests.jobs.making import submit

pytestmark = pytest.mark.django_db


def test_cancelling_a_pending_job_is_immediate(api, small_node):
    job_id = submit(api)
    response = api.post(f"/api/jobs/{job_id}/cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert Job.objects.get(pk=job_id).finished_at is not None


def test_cancelling_a_placed_job_releases_its_allocation(api, small_node, broker):
    job_id = submit(api)
    place_pending_jobs(batch_size=10)
    assert api.get(f"/api/jobs/{job_id}/").json()["status"] == "reserved"
    assert api.post(f"/api/jobs/{job_id}/cancel/").json()["status"] == "cancelled"
    job = Job.objects.get(pk=job_id)
    assert job.last_execution.status == ExecutionStatus.CANCELLED
    assert job.last_execution.allocation.status == AllocationStatus.RELEASED
    small_node.refresh_from_db()
    assert small_node.allocated_cpu_millis == 0
    # The message that may still arrive finds nothing to claim.
    assert execution_claim(token=job.last_execution.token, node_id=small_node.id) is None


def test_cancelling_a_running_job_asks_its_node_and_waits(api, small_node, broker):
    job_id = submit(api)
    token = place_pending_jobs(batch_size=10).tokens[0]
    execution_claim(token=token, node_id=small_node.id)
    body = api.post(f"/api/jobs/{job_id}/cancel/").json()
    assert body["status"] == "running"
    assert body["cancel_requested_at"] is not None
    # The node reports the kill: the job ends cancelled, whatever the exit code says.
    execution_finish(token=token, exit_code=-15, error="killed by signal SIGTERM")
    job = Job.objects.get(pk=job_id)
    assert job.status == JobStatus.CANCELLED
    assert job.last_execution.status == ExecutionStatus.CANCELLED


def test_cancelling_a_finished_job_is_a_400(api, small_node):
    job_id = submit(api)
    api.post(f"/api/jobs/{job_id}/cancel/")
    response = api.post(f"/api/jobs/{job_id}/cancel/")
    assert response.status_code == 400
    assert response.json() == {
        "status": ["The job already ended (cancelled); there is nothing to cancel."]
    }


def test_only_failed_or_cancelled_jobs_can_be_requeued(api, small_node):
    job_id = submit(api)
    response = api.post(f"/api/jobs/{job_id}/retry/")
    assert response.status_code == 400
    assert "status" in response.json()
    api.post(f"/api/jobs/{job_id}/cancel/")
    body = api.post(f"/api/jobs/{job_id}/retry/").json()
    assert body["status"] == "pending"
    assert [(r["attempt"], r["reason"]) for r in body["retries"]] == [(1, "requeued by alice")]


def test_acknowledging_takes_a_failed_job_out_of_the_dead_letter_view(api, small_node):
    job_id = submit(api)
    Job.objects.filter(pk=job_id).update(status=JobStatus.FAILED, finished_at=timezone.now())
    assert len(api.get("/api/jobs/", {"dead_letter": "true"}).json()["results"]) == 1
    body = api.post(f"/api/jobs/{job_id}/acknowledge/").json()
    assert body["dead_letter"] is False and body["acknowledged_at"]
    assert len(api.get("/api/jobs/", {"dead_letter": "true"}).json()["results"]) == 0
    assert len(api.get("/api/jobs/", {"dead_letter": "false"}).json()["results"]) == 1


def test_a_viewer_sees_but_cannot_change_a_job(api, small_node, team):
    job_id = submit(api)
    viewer = User.objects.create_user("victor")
    team_add_member(team=team, user=viewer, role=Role.VIEWER)
    client = token_client(viewer)
    assert client.get(f"/api/jobs/{job_id}/").status_code == 200
    for action in ("cancel", "retry", "acknowledge"):
        assert client.post(f"/api/jobs/{job_id}/{action}/").status_code == 403
    assert Job.objects.get(pk=job_id).status == JobStatus.PENDING


def test_another_team_cannot_touch_a_job(api, outsider_api, small_node):
    job_id = submit(api)
    for action in ("cancel", "retry", "acknowledge"):
        assert outsider_api.post(f"/api/jobs/{job_id}/{action}/").status_code == 404
    assert outsider_api.get(f"/api/jobs/{job_id}/logs/").status_code == 404
    assert Job.objects.get(pk=job_id).status == JobStatus.PENDING


def test_the_logs_of_a_job_that_has_not_run_are_a_404(api, small_node):
    job_id = submit(api)
    response = api.get(f"/api/jobs/{job_id}/logs/")
    assert response.status_code == 404
    assert api.get(f"/api/jobs/{job_id}/logs/", {"attempt": "x"}).status_code == 400


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"kind": "callable", "callable": "os.system"}, "callable"),
        ({"kind": "callable"}, "callable"),
        ({"kind": "callable", "callable": "jobs.callables.sleep", "command": ["x"]}, "command"),
        ({"callable": "jobs.callables.sleep"}, "callable"),
        ({"kind": "callable", "callable": "jobs.callables.sleep", "parameters": [1]}, "parameters"),
    ],
)
def test_callable_jobs_are_checked_against_the_allow_list(api, small_node, payload, field):
    body = {"name": "c", **payload}
    response = api.post("/api/jobs/", body, format="json")
    assert response.status_code == 400, response.json()
    assert field in response.json()
    assert not Job.objects.exists()
