"""`/api/agent/`: a node agent claims, reports and ships logs through the web API with its
node credential, and only for executions allocated to its node: another node's key gets
404 and changes nothing; a revoked key gets 401."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import AuditEvent
from jobs.api.agent import ExecutionToRunSerializer
from jobs.models import ExecutionStatus, Job, JobExecution, JobLogChunk, JobStatus
from jobs.scheduling.cycle import place_pending_jobs
from jobs.selectors import execution_task_nodes
from jobs.services.failover import execution_fail_over
from nodes.models import Node
from nodes.services import node_credential_issue, node_credential_revoke
from resources.models import Allocation, AllocationStatus
from tests.jobs.making import make_jobs

pytestmark = pytest.mark.django_db


def node_client(key) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {key}")
    return client


@pytest.fixture
def node_a(default_queue):
    return Node.objects.create(name="node-a", cpu_millis=1000, memory_mb=4096)


@pytest.fixture
def node_b(default_queue):
    return Node.objects.create(name="node-b", cpu_millis=1000, memory_mb=4096)


@pytest.fixture
def agent_a(node_a):
    return node_client(node_credential_issue(node_name="node-a")[1])


@pytest.fixture
def agent_b(node_b):
    return node_client(node_credential_issue(node_name="node-b")[1])


def reserved_on(node, team, **spec) -> str:
    """A job placed on `node` (the only ready node), its execution's token."""
    Node.objects.exclude(pk=node.pk).update(status="cordoned")
    make_jobs(team, 1, **spec)
    tokens = place_pending_jobs(batch_size=10).tokens
    Node.objects.exclude(pk=node.pk).update(status="ready")
    (token,) = tokens
    return token


def claim(agent, token):
    return agent.post("/api/agent/claim/", {"token": token}, format="json")


def state(token) -> tuple:
    execution = JobExecution.objects.select_related("job").get(token=token)
    return (
        execution.status,
        execution.job.status,
        execution.job.cancel_requested_at,
        list(Allocation.objects.filter(execution=execution).values_list("status", flat=True)),
        JobLogChunk.objects.filter(execution=execution).count(),
    )


def test_it_claims_an_execution_of_its_node_once_with_all_the_runner_needs(agent_a, node_a, team):
    token = reserved_on(node_a, team, command=["echo", "hi"], env={"A": "1"}, parameters={"x": 2})
    response = claim(agent_a, token)
    assert response.status_code == 200, response.content
    body = response.json()
    job = Job.objects.get()
    assert body["token"] == token and body["job_id"] == job.id and body["attempt"] == 1
    assert body["command"] == ["echo", "hi"] and body["kind"] == "command"
    assert body["env"] == {"A": "1"} and body["parameters"] == {"x": 2}
    assert body["cpu_millis"] == 1000 and body["memory_mb"] == 100 and body["name"] == "j"
    assert JobExecution.objects.get(token=token).status == ExecutionStatus.RUNNING
    assert claim(agent_a, token).status_code == 409


def test_it_reports_a_failure_and_the_job_moves_on(agent_a, node_a, team):
    token = reserved_on(node_a, team)
    claim(agent_a, token)
    response = agent_a.post(
        "/api/agent/finish/",
        {"token": token, "exit_code": 3, "error": "exit code 3", "log_tail": "oops\n"},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "failed"}
    assert Job.objects.get().status == JobStatus.FAILED
    again = agent_a.post("/api/agent/finish/", {"token": token, "exit_code": 3}, format="json")
    assert again.json() == {"status": None}


def test_a_success_takes_the_waiting_job_onto_the_room_it_freed(agent_a, node_a, team):
    # 1 CPU each, on a node of 1 CPU: the second waits for room.
    make_jobs(team, 2, env={"A": "1"}, parameters={"x": [2]}, timeout_seconds=30)
    (token,) = place_pending_jobs(batch_size=10).tokens
    claim(agent_a, token)
    waiting = Job.objects.get(status=JobStatus.PENDING)
    response = agent_a.post(
        "/api/agent/successes/",
        {"successes": [{"token": token, "log_tail": "ok\n"}], "claim": 1},
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["ended"] == [token]
    (claimed,) = body["claimed"]
    assert claimed["job_id"] == waiting.id
    execution = JobExecution.objects.select_related("job").get(token=claimed["token"])
    assert execution.status == ExecutionStatus.RUNNING
    # All the runner needs, as a claim of its own would have answered it.
    execution.task_nodes = execution_task_nodes(execution=execution)
    assert claimed == ExecutionToRunSerializer(execution).data
    assert claimed["env"] == {"A": "1"} and claimed["timeout_seconds"] == 30
    assert JobExecution.objects.get(token=token).status == ExecutionStatus.SUCCEEDED


def test_a_batch_of_successes_takes_as_many_statements_whatever_its_size(agent_a, node_a, team):
    Node.objects.filter(pk=node_a.pk).update(cpu_millis=4000)
    make_jobs(team, 4)
    running = place_pending_jobs(batch_size=10).tokens
    for token in running:
        assert claim(agent_a, token).status_code == 200
    make_jobs(team, 8)
    place_pending_jobs(batch_size=10)  # told they wait for room
    counts = []
    for batch in (running[:1], running[1:]):
        body = {"successes": [{"token": t, "log_tail": "ok\n"} for t in batch], "claim": 3}
        with CaptureQueriesContext(connection) as queries:
            answer = agent_a.post("/api/agent/successes/", body, format="json").json()
        assert len(answer["ended"]) == len(answer["claimed"]) == len(batch)
        counts.append(len(queries))
    # The key, then in one transaction (savepoint here): the batch's end, the node and
    # the waiting jobs, the preempting jobs' held room, the running jobs' time limits
    # (for a reservation) and the placements claimed for the reporting threads.
    assert counts == [9, 9], counts


def test_it_lists_the_cancel_requests_and_stores_log_chunks(agent_a, node_a, team):
    token = reserved_on(node_a, team)
    claim(agent_a, token)
    asked = agent_a.post("/api/agent/cancel-requests/", {"tokens": [token]}, format="json")
    empty = {"tokens": [], "preempt": [], "taken_away": []}
    assert asked.status_code == 200 and asked.json() == empty
    Job.objects.update(cancel_requested_at=timezone.now())
    asked = agent_a.post("/api/agent/cancel-requests/", {"tokens": [token]}, format="json")
    assert asked.json() == {**empty, "tokens": [token]}
    execution_id = JobExecution.objects.get(token=token).id
    chunk = {"execution_id": execution_id, "seq": 0, "first_line": 1, "offset": 0, "text": "a\n"}
    shipped = agent_a.post("/api/agent/log-chunks/", {"chunks": [chunk], "cuts": {}}, format="json")
    assert shipped.status_code == 204, shipped.content
    assert list(JobLogChunk.objects.values_list("text", flat=True)) == ["a\n"]


def test_another_nodes_key_is_404_and_changes_nothing(agent_a, agent_b, node_a, node_b, team):
    token = reserved_on(node_a, team)
    before = state(token)
    assert claim(agent_b, token).status_code == 404
    assert state(token) == before
    claim(agent_a, token)
    execution_id = JobExecution.objects.get(token=token).id
    Job.objects.update(cancel_requested_at=timezone.now())
    before = state(token)
    chunk = {"execution_id": execution_id, "seq": 0, "first_line": 1, "offset": 0, "text": "x"}
    refused = {
        "finish": agent_b.post(
            "/api/agent/finish/", {"token": token, "exit_code": 0}, format="json"
        ),
        "successes": agent_b.post(
            "/api/agent/successes/", {"successes": [{"token": token}], "claim": 1}, format="json"
        ),
        "cancel": agent_b.post("/api/agent/cancel-requests/", {"tokens": [token]}, format="json"),
        "log": agent_b.post("/api/agent/log-chunks/", {"chunks": [chunk]}, format="json"),
        "cut": agent_b.post("/api/agent/log-chunks/", {"cuts": {execution_id: 5}}, format="json"),
        "unknown": claim(agent_b, "job-999-attempt-1"),
    }
    assert {name: r.status_code for name, r in refused.items()} == dict.fromkeys(refused, 404)
    assert state(token) == before


def test_a_batch_of_successes_with_another_nodes_execution_is_404_and_ends_none(
    agent_a, agent_b, node_a, node_b, team
):
    own, other = reserved_on(node_a, team), reserved_on(node_b, team)
    claim(agent_a, own)
    claim(agent_b, other)
    before = {token: state(token) for token in (own, other)}
    body = {"successes": [{"token": own}, {"token": other}], "claim": 2}
    assert agent_a.post("/api/agent/successes/", body, format="json").status_code == 404
    assert {token: state(token) for token in (own, other)} == before
    assert before[own][:2] == (ExecutionStatus.RUNNING, JobStatus.RUNNING)
    # Its own alone it ends.
    alone = agent_a.post("/api/agent/successes/", {"successes": [{"token": own}]}, format="json")
    assert alone.json() == {"ended": [own], "claimed": []}


def test_a_revoked_key_is_401_at_once_and_changes_nothing(node_a, team):
    credential, key = node_credential_issue(node_name="node-a")
    agent = node_client(key)
    token = reserved_on(node_a, team)
    assert claim(agent, token).status_code == 200
    node_credential_revoke(credential=credential)
    before = state(token)
    calls = [
        claim(agent, token),
        agent.post("/api/agent/finish/", {"token": token, "exit_code": 0}, format="json"),
        agent.post("/api/agent/successes/", {"successes": [{"token": token}]}, format="json"),
        agent.post("/api/agent/cancel-requests/", {"tokens": [token]}, format="json"),
        agent.post("/api/nodes/node-a/heartbeat/", {"running_tokens": [token]}, format="json"),
    ]
    assert [r.status_code for r in calls] == [401] * len(calls)
    assert state(token) == before
    assert before[3] == [AllocationStatus.ACTIVE]


def test_a_users_token_is_no_node_credential(api, node_a, team):
    token = reserved_on(node_a, team)
    assert claim(api, token).status_code == 401
    assert claim(APIClient(), token).status_code == 401
    assert JobExecution.objects.get(token=token).status == ExecutionStatus.RESERVED


def test_a_claim_sent_again_after_a_lost_answer_resumes_it_for_its_node_only(
    agent_a, agent_b, node_a, team
):
    token = reserved_on(node_a, team)
    assert claim(agent_a, token).status_code == 200  # its answer lost on the way
    again = agent_a.post("/api/agent/claim/", {"token": token, "resume": True}, format="json")
    assert again.status_code == 200 and again.json()["token"] == token
    other = agent_b.post("/api/agent/claim/", {"token": token, "resume": True}, format="json")
    assert other.status_code == 404


def test_a_batch_of_successes_sent_again_answers_those_recorded_as_ended(agent_a, node_a, team):
    token = reserved_on(node_a, team)
    claim(agent_a, token)
    body = {"successes": [{"token": token}]}
    assert agent_a.post("/api/agent/successes/", body, format="json").json()["ended"] == [token]
    again = agent_a.post("/api/agent/successes/", {**body, "resume": True}, format="json")
    assert again.json() == {"ended": [token], "claimed": []}
    plain = agent_a.post("/api/agent/successes/", body, format="json")
    assert plain.json() == {"ended": [], "claimed": []}


def test_the_agents_calls_on_executions_leave_no_audit_event(agent_a, node_a, team):
    token = reserved_on(node_a, team)
    assert claim(agent_a, token).status_code == 200
    agent_a.post("/api/agent/cancel-requests/", {"tokens": [token]}, format="json")
    execution_id = JobExecution.objects.get(token=token).id
    chunk = {"execution_id": execution_id, "seq": 0, "first_line": 1, "offset": 0, "text": "a\n"}
    agent_a.post("/api/agent/log-chunks/", {"chunks": [chunk], "cuts": {}}, format="json")
    ended = agent_a.post("/api/agent/successes/", {"successes": [{"token": token}]}, format="json")
    assert ended.json()["ended"] == [token]
    other = reserved_on(node_a, team)
    claim(agent_a, other)
    outcome = {"token": other, "exit_code": 1, "error": "exit code 1"}
    finished = agent_a.post("/api/agent/finish/", outcome, format="json")
    assert finished.json() == {"status": ExecutionStatus.FAILED}
    assert not AuditEvent.objects.exists()


def test_a_failed_over_execution_is_taken_away_and_its_late_reports_change_nothing(
    agent_a, node_a, team
):
    token = reserved_on(node_a, team, max_retries=0)
    claim(agent_a, token)
    execution = JobExecution.objects.get(token=token)
    assert execution_fail_over(execution_id=execution.id, reason="node lost")
    asked = agent_a.post("/api/agent/cancel-requests/", {"tokens": [token]}, format="json")
    assert asked.json() == {"tokens": [], "preempt": [], "taken_away": [token]}
    before = state(token)
    assert before[:2] == (ExecutionStatus.LOST, JobStatus.PENDING)
    # A success and a failure sent late, once the link is back: both ignored.
    late = agent_a.post("/api/agent/successes/", {"successes": [{"token": token}]}, format="json")
    assert late.status_code == 200 and late.json()["ended"] == []
    late = agent_a.post(
        "/api/agent/finish/", {"token": token, "exit_code": 1, "error": "x"}, format="json"
    )
    assert late.status_code == 200 and late.json() == {"status": None}
    assert state(token) == before
    assert Job.objects.get().attempts == 1


def test_a_report_with_bad_gpu_ids_is_a_400_that_changes_nothing(agent_a, node_a, team):
    token = reserved_on(node_a, team)
    assert claim(agent_a, token).status_code == 200
    before = state(token)
    for path, body in (
        ("/api/agent/finish/", {"token": token, "exit_code": 1, "gpu_ids": [-1]}),
        ("/api/agent/successes/", {"successes": [{"token": token, "gpu_ids": ["x"]}]}),
        ("/api/agent/finish/", {"token": token, "exit_code": 1, "gpu_ids": [1024]}),
    ):
        response = agent_a.post(path, body, format="json")
        assert response.status_code == 400, response.content
    assert state(token) == before
    response = agent_a.post(
        "/api/agent/successes/", {"successes": [{"token": token, "gpu_ids": [3, 0]}]}, format="json"
    )
    assert response.json()["ended"] == [token]
    assert JobExecution.objects.get(token=token).gpu_ids == [3, 0]
