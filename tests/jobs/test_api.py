"""POST /api/jobs/ and GET /api/jobs/{id}/: validation, tenancy, idempotency."""

import pytest
from rest_framework.test import APIClient

from jobs.models import Job

pytestmark = pytest.mark.django_db

ECHO = {"name": "hello", "command": ["echo", "hello"]}


def test_it_requires_authentication(small_node):
    response = APIClient().post("/api/jobs/", ECHO, format="json")
    assert response.status_code == 401
    assert not Job.objects.exists()


def test_it_rejects_an_unknown_token(small_node):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token abc.def")
    assert client.get("/api/jobs/").status_code == 401


def test_it_submits_a_pending_job(api, small_node, team):
    response = api.post(
        "/api/jobs/",
        {**ECHO, "resources": {"cpu": "0.5", "memory_mb": 128, "gpu": 1}, "env": {"A": "1"}},
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "pending"
    assert body["team"] == "blue"
    assert body["resources"] == {"cpu": 0.5, "memory_mb": 128, "gpu": 1}
    assert body["node"] is None and body["exit_code"] is None and body["attempts"] == 0
    job = Job.objects.get(pk=body["id"])
    assert (job.cpu_millis, job.memory_mb, job.gpu, job.env) == (500, 128, 1, {"A": "1"})


def test_a_cpu_time_limit_is_kept_and_shown(api, small_node):
    limited = api.post("/api/jobs/", {**ECHO, "cpu_time_limit_seconds": 3600}, format="json")
    assert limited.status_code == 201, limited.json()
    assert limited.json()["cpu_time_limit_seconds"] == 3600
    assert Job.objects.get(pk=limited.json()["id"]).cpu_time_limit_seconds == 3600
    unlimited = api.post("/api/jobs/", ECHO, format="json").json()
    assert api.get(f"/api/jobs/{unlimited['id']}/").json()["cpu_time_limit_seconds"] is None


def test_it_rejects_more_cpu_than_any_node_has(api, small_node):
    response = api.post("/api/jobs/", {**ECHO, "resources": {"cpu": 8}}, format="json")
    assert response.status_code == 400
    assert response.json() == {"resources": ["Requests 8 CPU, but the largest node has 4 CPU."]}
    assert not Job.objects.exists()


def test_it_rejects_a_request_no_single_node_holds(api, db):
    from nodes.models import Node

    Node.objects.create(name="wide", cpu_millis=8000, memory_mb=1024)
    Node.objects.create(name="deep", cpu_millis=1000, memory_mb=65536)
    response = api.post(
        "/api/jobs/", {**ECHO, "resources": {"cpu": 4, "memory_mb": 4096}}, format="json"
    )
    assert response.status_code == 400
    assert "at once" in response.json()["resources"][0]


def test_it_rejects_when_no_node_is_registered(api, team):
    response = api.post("/api/jobs/", ECHO, format="json")
    assert response.status_code == 400
    assert response.json() == {"resources": ["No node is registered, so no node can run this job."]}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "x"}, "command"),
        ({**ECHO, "command": []}, "command"),
        ({**ECHO, "command": "echo hi"}, "command"),
        ({**ECHO, "resources": {"cpu": 0}}, "resources"),
        ({**ECHO, "resources": {"cpu": "lots"}}, "resources"),
        ({**ECHO, "resources": {"memory_mb": -1}}, "resources"),
        ({**ECHO, "resources": {"cpus": 2}}, "resources"),
        ({**ECHO, "env": {"A=B": "1"}}, "env"),
        ({**ECHO, "env": ["A"]}, "env"),
        ({**ECHO, "timeout_seconds": 0}, "timeout_seconds"),
        ({**ECHO, "cpu_time_limit_seconds": 0}, "cpu_time_limit_seconds"),
        ({**ECHO, "cpu_time_limit_seconds": "an hour"}, "cpu_time_limit_seconds"),
        ({**ECHO, "kind": "shell"}, "kind"),
        ({**ECHO, "team": "red"}, "team"),
        ({**ECHO, "priority": "high"}, "priority"),
        ({**ECHO, "not_before": "tomorrow"}, "not_before"),
        ({**ECHO, "colour": "blue"}, "colour"),
        ({**ECHO, "name": "x" * 201}, "name"),
        ({**ECHO, "command": ["x"] * 257}, "command"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_changes_nothing(
    api, small_node, other_team, payload, field
):
    response = api.post("/api/jobs/", payload, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert not Job.objects.exists()


def test_malformed_json_is_a_400(api, small_node):
    response = api.post("/api/jobs/", "{not json", content_type="application/json")
    assert response.status_code == 400


def test_the_same_idempotency_key_returns_the_first_job(api, small_node):
    first = api.post("/api/jobs/", {**ECHO, "idempotency_key": "nightly-42"}, format="json")
    again = api.post(
        "/api/jobs/", {**ECHO, "name": "other", "idempotency_key": "nightly-42"}, format="json"
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["name"] == "hello"
    assert Job.objects.count() == 1


def test_idempotency_keys_are_per_team(api, outsider_api, small_node):
    mine = api.post("/api/jobs/", {**ECHO, "idempotency_key": "k"}, format="json")
    theirs = outsider_api.post("/api/jobs/", {**ECHO, "idempotency_key": "k"}, format="json")
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]


def test_another_teams_job_answers_404(api, outsider_api, small_node):
    job_id = api.post("/api/jobs/", ECHO, format="json").json()["id"]
    assert outsider_api.get(f"/api/jobs/{job_id}/").status_code == 404
    assert outsider_api.get(f"/api/jobs/{job_id}/executions/").status_code == 404
    assert len(outsider_api.get("/api/jobs/").json()["results"]) == 0
    assert len(api.get("/api/jobs/").json()["results"]) == 1


def test_a_viewer_cannot_submit(small_node, team):
    from accounts.models import Role, User
    from accounts.services import team_add_member
    from tests.conftest import token_client

    viewer = User.objects.create_user("victor")
    team_add_member(team=team, user=viewer, role=Role.VIEWER)
    client = token_client(viewer)
    assert client.post("/api/jobs/", ECHO, format="json").status_code == 403
    assert client.post("/api/jobs/", {**ECHO, "team": "blue"}, format="json").status_code == 403
    assert not Job.objects.exists()


def test_the_list_filters_by_status_and_name(api, small_node):
    for name in ("a", "b", "b"):
        api.post("/api/jobs/", {**ECHO, "name": name}, format="json")
    Job.objects.filter(name="a").update(status="succeeded")
    assert len(api.get("/api/jobs/", {"status": "succeeded"}).json()["results"]) == 1
    assert len(api.get("/api/jobs/", {"name": "b"}).json()["results"]) == 2
    assert api.get("/api/jobs/", {"status": "bogus"}).status_code == 400


def test_the_list_has_a_fixed_number_of_queries(api, small_node, django_assert_max_num_queries):
    for i in range(20):
        api.post("/api/jobs/", {**ECHO, "name": f"j{i}"}, format="json")
    # Authentication (1, plus at most 1 last-used update), the caller's teams, page.
    with django_assert_max_num_queries(4):
        response = api.get("/api/jobs/", {"page_size": 20})
    assert len(response.json()["results"]) == 20


def test_a_job_goes_to_the_default_queue_unless_it_names_another(api, small_node, team):
    from resources.models import Queue

    Queue.objects.create(name="batch").teams.add(team)
    first = api.post("/api/jobs/", ECHO, format="json").json()
    second = api.post("/api/jobs/", {**ECHO, "queue": "batch"}, format="json").json()
    assert (first["queue"], second["queue"]) == ("default", "batch")
    assert Job.objects.get(pk=second["id"]).queue.name == "batch"
    assert len(api.get("/api/jobs/", {"queue": "batch"}).json()["results"]) == 1


@pytest.mark.parametrize("queue", ["nowhere", "red-only"])
def test_an_unknown_queue_or_one_the_team_may_not_use_is_a_400_naming_queue(
    api, small_node, other_team, queue
):
    from resources.models import Queue

    Queue.objects.create(name="red-only").teams.add(other_team)
    response = api.post("/api/jobs/", {**ECHO, "queue": queue}, format="json")
    assert response.status_code == 400
    assert response.json() == {"queue": [f"No queue named '{queue}' that team blue may submit to."]}
    assert not Job.objects.exists()


def test_a_request_larger_than_the_whole_queue_quota_is_refused(api, small_node, team):
    from resources.models import Queue

    Queue.objects.create(name="small", all_teams=True, quota_cpu_millis=1500, quota_gpu=0)
    response = api.post(
        "/api/jobs/",
        {**ECHO, "queue": "small", "resources": {"cpu": 2, "gpu": 1}},
        format="json",
    )
    assert response.status_code == 400
    assert response.json() == {
        "resources": [
            "Requests 2 CPU, but queue small allows at most 1.5 CPU at once.",
            "Requests 1 GPU, but queue small allows at most 0 at once.",
        ]
    }
    ok = api.post(
        "/api/jobs/", {**ECHO, "queue": "small", "resources": {"cpu": 1.5}}, format="json"
    )
    assert ok.status_code == 201
