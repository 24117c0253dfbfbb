"""Gangs against the real database: submission, placement of all tasks in one cycle,
the tasks' claims, and an attempt that ends as one (no agents: the tests claim and
finish as the nodes would). The same with real agents is in tests/e2e/test_gangs.py."""

import pytest

from events.models import Event, EventType
from jobs.models import ExecutionStatus, Job, JobExecution, JobStatus, PendingReason
from jobs.scheduling.cycle import place_pending_jobs
from jobs.selectors import execution_stop_requests
from jobs.services.actions import execution_release_stuck, job_cancel
from jobs.services.executions import execution_claim, execution_finish
from jobs.services.failover import execution_fail_over
from nodes.models import Node
from resources.models import Allocation, AllocationStatus, Queue
from tests.jobs.making import ECHO, make_jobs, submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def three_nodes(db):
    return [
        Node.objects.create(name=f"n{i}", address=f"10.0.0.{i}", cpu_millis=1000, memory_mb=1024)
        for i in range(3)
    ]


def gang(team, tasks=3, **spec):
    return make_jobs(team, 1, tasks=tasks, **spec)[0]


def executions(job):
    return list(JobExecution.objects.filter(job=job).order_by("attempt", "task_index"))


def claim_all(job):
    claimed = []
    for execution in executions(job):
        if execution.status == ExecutionStatus.RESERVED:
            claimed.append(execution_claim(token=execution.token, node_id=execution.node_id))
    return claimed


# --- Submission ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"tasks": 0}, "greater than or equal to 1"),
        ({"tasks": 257}, "less than or equal to 256"),
        ({"tasks": "many"}, "valid integer"),
        ({"tasks": 4}, "hold at most 3 of them"),
        ({"tasks": 4, "resources": {"cpu": 0.25, "memory_mb": 600}}, "hold at most 3 of them"),
        ({"tasks": 2, "node_selector": {"zone": "b"}}, "hold at most 0 of them"),
        ({"tasks": 2, "array": {"count": 3}}, "array job cannot be a gang"),
    ],
)
def test_a_bad_gang_is_a_400_on_tasks_and_changes_nothing(api, three_nodes, extra, words):
    response = api.post("/api/jobs/", {**ECHO, **extra}, format="json")
    assert response.status_code == 400, response.content
    assert words in " ".join(response.json()["tasks"])
    assert not Job.objects.exists()


def test_a_gang_over_its_queue_quota_as_a_whole_is_a_400(api, three_nodes):
    Queue.objects.filter(name="default").update(quota_cpu_millis=2000)
    response = api.post("/api/jobs/", {**ECHO, "tasks": 3}, format="json")
    assert response.status_code == 400
    assert "All 3 tasks together" in response.json()["tasks"][0]


def test_a_gang_is_submitted_with_its_tasks_and_shows_them(api, three_nodes):
    job_id = submit(api, tasks=3)
    assert api.get(f"/api/jobs/{job_id}/").json()["tasks"] == 3
    assert Job.objects.get(pk=job_id).tasks == 3
    assert submit(api) and Job.objects.exclude(pk=job_id).get().tasks == 1


def test_a_definition_carries_its_tasks_to_its_jobs(api, three_nodes):
    response = api.post("/api/definitions/", {**ECHO, "tasks": 2}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["tasks"] == 2
    submitted = api.post(f"/api/definitions/{response.json()['id']}/submit/", {}, format="json")
    assert submitted.status_code == 201, submitted.content
    assert Job.objects.get(pk=submitted.json()["id"]).tasks == 2


# --- Placement -----------------------------------------------------------------------------


def test_all_tasks_are_placed_in_one_cycle_each_with_its_token(team, three_nodes):
    job = gang(team)
    result = place_pending_jobs(batch_size=10)
    base = f"job-{job.id}-attempt-1"
    assert sorted(result.tokens) == [base, f"{base}-task-1", f"{base}-task-2"]
    placed = executions(job)
    assert [e.task_index for e in placed] == [0, 1, 2]
    assert {e.node.name for e in placed} == {"n0", "n1", "n2"}
    assert Allocation.objects.filter(status=AllocationStatus.RESERVED).count() == 3
    assert all(n.allocated_cpu_millis == 1000 for n in Node.objects.all())
    job.refresh_from_db()
    assert (job.status, job.attempts, job.last_execution.task_index) == (JobStatus.RESERVED, 1, 0)
    placed_events = Event.objects.filter(job_id=job.id, type=EventType.JOB_PLACED)
    assert sorted(e.data["task_index"] for e in placed_events) == [0, 1, 2]


def test_a_gang_that_does_not_fit_places_nothing_and_says_why(team, three_nodes, api):
    make_jobs(team, 1, priority=5)  # takes one node first
    job = gang(team)
    assert place_pending_jobs(batch_size=10).placed == 1
    job.refresh_from_db()
    assert (job.status, job.pending_reason) == (JobStatus.PENDING, PendingReason.GANG_DOES_NOT_FIT)
    assert not JobExecution.objects.filter(job=job).exists()
    assert sum(n.allocated_cpu_millis for n in Node.objects.all()) == 1000
    why = api.get(f"/api/jobs/{job.id}/why/").json()
    assert why["reason"] == "gang_does_not_fit"
    assert why["gang"]["room_now"] == 2 and why["gang"]["node_count"] == 2
    assert "needs 3 tasks of 1 CPU" in why["summary"]
    assert "room for 2 found on 2 node(s)" in why["summary"]


def test_each_claim_answers_its_task_index_and_the_gangs_nodes_in_order(team, three_nodes):
    job = gang(team)
    place_pending_jobs(batch_size=10)
    claimed = claim_all(job)
    nodes = ",".join(f"10.0.0.{e.node.name[1]}" for e in executions(job))
    assert [(e.task_index, e.job.tasks, e.task_nodes) for e in claimed] == [
        (0, 3, nodes),
        (1, 3, nodes),
        (2, 3, nodes),
    ]
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING


# --- Ending as one -------------------------------------------------------------------------


def test_the_job_succeeds_only_when_every_task_has(team, three_nodes):
    job = gang(team)
    place_pending_jobs(batch_size=10)
    first, *others = claim_all(job)
    assert execution_finish(token=first.token, exit_code=0) == ExecutionStatus.SUCCEEDED
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING
    for execution in others:
        execution_finish(token=execution.token, exit_code=0)
    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 1)
    assert not Allocation.objects.exclude(status=AllocationStatus.RELEASED).exists()
    assert all(n.allocated_cpu_millis == 0 for n in Node.objects.all())


def test_a_failed_task_stops_the_others_and_the_gang_retries_as_one_attempt(team, three_nodes):
    job = gang(team, max_retries=1, retry_backoff_seconds=0)
    place_pending_jobs(batch_size=10)
    first, second = [  # task 2 is not started yet
        execution_claim(token=e.token, node_id=e.node_id) for e in executions(job)[:2]
    ]
    assert execution_finish(token=second.token, exit_code=3, error="exit code 3") == "failed"
    by_task = {e.task_index: e for e in executions(job)}
    assert by_task[2].status == ExecutionStatus.CANCELLED  # not started: cancelled at once
    assert by_task[0].stop_requested_at is not None
    asked = execution_stop_requests(tokens=[first.token], node_id=first.node_id)
    assert asked.cancel == [first.token]
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING  # until its last task has stopped
    stopping = Event.objects.get(job_id=job.id, type=EventType.JOB_GANG_STOPPING)
    assert stopping.data["stopping"] == [0] and stopping.data["cancelled"] == 1
    # The cancelled task's claim, sent late, finds nothing to run.
    assert execution_claim(token=by_task[2].token, node_id=by_task[2].node_id) is None

    assert execution_finish(token=first.token, exit_code=-15, cancelled=True) == "cancelled"
    job.refresh_from_db()
    assert (job.status, job.pending_reason, job.attempts) == (
        JobStatus.PENDING,
        PendingReason.WAITING_RETRY,
        1,
    )
    assert all(n.allocated_cpu_millis == 0 for n in Node.objects.all())
    assert Event.objects.filter(job_id=job.id, type=EventType.JOB_ATTEMPT_FAILED).count() == 1
    Job.objects.filter(pk=job.pk).update(not_before=None)
    place_pending_jobs(batch_size=10)
    for execution in claim_all(job):
        assert execution.attempt == 2
        execution_finish(token=execution.token, exit_code=0)
    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 2)


def test_a_task_lost_with_its_node_stops_the_others_and_retries_at_once(team, three_nodes):
    job = gang(team)  # no retries: a lost attempt does not count against them
    place_pending_jobs(batch_size=10)
    claimed = claim_all(job)
    assert execution_fail_over(execution_id=claimed[1].id, reason="node lost")
    assert {e.task_index for e in executions(job) if e.stop_requested_at} == {0, 2}
    for execution in (claimed[0], claimed[2]):
        execution_finish(token=execution.token, exit_code=-15, cancelled=True)
    job.refresh_from_db()
    assert (job.status, job.pending_reason, job.attempts) == (
        JobStatus.PENDING,
        PendingReason.WAITING_RETRY,
        1,
    )


def test_a_cancel_of_a_placed_gang_cancels_the_unstarted_and_stops_the_started(team, three_nodes):
    job = gang(team)
    place_pending_jobs(batch_size=10)
    started = execution_claim(token=executions(job)[0].token, node_id=executions(job)[0].node_id)
    job_cancel(job=job)
    job.refresh_from_db()
    assert job.cancel_requested_at is not None and job.status == JobStatus.RUNNING
    assert [e.status for e in executions(job)] == ["running", "cancelled", "cancelled"]
    execution_finish(token=started.token, exit_code=-15, cancelled=True)
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    assert all(n.allocated_cpu_millis == 0 for n in Node.objects.all())


def test_each_tasks_attempt_and_log_are_listed_apart(team, three_nodes, api):
    job = gang(team)
    place_pending_jobs(batch_size=10)
    for execution in claim_all(job):
        execution_finish(
            token=execution.token, exit_code=0, log_tail=f"task {execution.task_index}\n"
        )
    listed = api.get(f"/api/jobs/{job.id}/executions/").json()
    rows = listed["results"] if isinstance(listed, dict) else listed
    assert [(e["attempt"], e["task_index"]) for e in rows] == [(1, 0), (1, 1), (1, 2)]
    for query, text in (("?task=1", b"task 1\n"), ("", b"task 0\n")):
        response = api.get(f"/api/jobs/{job.id}/logs/{query}")
        assert b"".join(response.streaming_content) == text
    assert api.get(f"/api/jobs/{job.id}/logs/?task=3").status_code == 404


def test_an_operator_releasing_a_stuck_task_stops_the_rest_of_its_gang(team, three_nodes):
    job = gang(team)
    place_pending_jobs(batch_size=10)
    claimed = claim_all(job)
    assert execution_release_stuck(execution_id=claimed[2].id, released_by="admin")
    assert {e.task_index for e in executions(job) if e.stop_requested_at} == {0, 1}
    for execution in claimed[:2]:
        execution_finish(token=execution.token, exit_code=-15, cancelled=True)
    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.FAILED, 1)  # no retries left
    assert all(n.allocated_cpu_millis == 0 for n in Node.objects.all())
