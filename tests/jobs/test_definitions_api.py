"""/api/definitions/: CRUD with validation (400 naming the field), tenancy, deleting a
definition that schedules use, submitting jobs from a definition (with overrides and
idempotency keys), and POST /api/jobs/ with a definition."""

import pytest
from django_celery_beat.models import PeriodicTask

from accounts.models import AuditEvent, Role, User
from accounts.services import team_add_member
from jobs.models import Job, JobDefinition, JobSchedule
from jobs.schedules import schedule_create
from resources.models import Queue
from tests.conftest import token_client

pytestmark = pytest.mark.django_db

ECHO = {"name": "echo", "command": ["echo", "hello"]}


@pytest.fixture
def viewer_api(team):
    user = User.objects.create_user("victor", password="correct horse battery")
    team_add_member(team=team, user=user, role=Role.VIEWER)
    return token_client(user)


@pytest.fixture
def definition(api, small_node):
    response = api.post(
        "/api/definitions/",
        {
            **ECHO,
            "env": {"A": "1", "B": "2"},
            "parameters": {"x": 1, "y": 2},
            "resources": {"cpu": "0.5", "memory_mb": 128},
            "priority": 3,
            "max_retries": 2,
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    return JobDefinition.objects.get(pk=response.json()["id"])


def test_it_creates_a_definition_and_shows_its_whole_spec(api, small_node):
    response = api.post(
        "/api/definitions/",
        {
            **ECHO,
            "env": {"A": "1"},
            "resources": {"cpu": "1.5", "memory_mb": 512, "gpu": 1},
            "timeout_seconds": 60,
            "cpu_time_limit_seconds": 120,
            "node_selector": {"zone": "a"},
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["team"] == "blue" and body["queue"] == "default"
    assert body["kind"] == "command" and body["command"] == ["echo", "hello"]
    assert body["callable"] == ""
    assert body["resources"] == {"cpu": 1.5, "memory_mb": 512, "gpu": 1}
    assert body["env"] == {"A": "1"} and body["node_selector"] == {"zone": "a"}
    assert body["timeout_seconds"] == 60 and body["schedule_count"] == 0
    assert body["created_at"] and body["updated_at"]
    assert body["cpu_time_limit_seconds"] == 120
    stored = JobDefinition.objects.get(pk=body["id"])
    assert (stored.cpu_millis, stored.memory_mb, stored.gpu) == (1500, 512, 1)
    job = api.post(f"/api/definitions/{stored.pk}/submit/", {}, format="json").json()
    assert job["cpu_time_limit_seconds"] == 120


def test_it_creates_a_callable_definition(api, small_node):
    response = api.post(
        "/api/definitions/",
        {
            "name": "params",
            "kind": "callable",
            "callable": "jobs.callables.echo_parameters",
            "parameters": {"n": 1},
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["command"] == []


def test_it_lists_and_shows_the_callers_definitions_only(api, outsider_api, definition):
    assert api.get("/api/definitions/").json()["count"] == 1
    assert api.get("/api/definitions/", {"name": "echo"}).json()["count"] == 1
    assert api.get("/api/definitions/", {"name": "other"}).json()["count"] == 0
    assert api.get(f"/api/definitions/{definition.pk}/").json()["name"] == "echo"
    assert outsider_api.get("/api/definitions/").json()["count"] == 0


def test_another_teams_definition_answers_404_and_changes_nothing(outsider_api, definition):
    url = f"/api/definitions/{definition.pk}/"
    assert outsider_api.get(url).status_code == 404
    assert outsider_api.patch(url, {"priority": 9}, format="json").status_code == 404
    assert outsider_api.delete(url).status_code == 404
    assert outsider_api.post(f"{url}submit/", {}, format="json").status_code == 404
    by_jobs = outsider_api.post("/api/jobs/", {"definition": definition.pk}, format="json")
    assert by_jobs.status_code == 400 and "definition" in by_jobs.json()
    definition.refresh_from_db()
    assert definition.priority == 3
    assert not Job.objects.exists()


def test_a_viewer_sees_but_cannot_create_change_delete_or_submit(viewer_api, definition):
    url = f"/api/definitions/{definition.pk}/"
    assert viewer_api.get(url).status_code == 200
    assert (
        viewer_api.post("/api/definitions/", ECHO | {"name": "v"}, format="json").status_code == 403
    )
    assert viewer_api.patch(url, {"priority": 9}, format="json").status_code == 403
    assert viewer_api.delete(url).status_code == 403
    assert viewer_api.post(f"{url}submit/", {}, format="json").status_code == 403
    by_jobs = viewer_api.post("/api/jobs/", {"definition": definition.pk}, format="json")
    assert by_jobs.status_code == 403
    assert JobDefinition.objects.count() == 1 and not Job.objects.exists()


def test_anonymous_callers_get_401(definition):
    from rest_framework.test import APIClient

    client = APIClient()
    assert client.get("/api/definitions/").status_code == 401
    assert client.post(f"/api/definitions/{definition.pk}/submit/").status_code == 401


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "x"}, "command"),
        ({**ECHO, "command": []}, "command"),
        ({**ECHO, "kind": "callable", "callable": "os.system"}, "command"),
        ({"name": "x", "kind": "callable", "callable": "os.system"}, "callable"),
        ({"name": "x", "kind": "callable"}, "callable"),
        ({**ECHO, "resources": {"cpu": 64}}, "resources"),
        ({**ECHO, "resources": {"memory_mb": 10**6}}, "resources"),
        ({**ECHO, "resources": {"cpu": 0}}, "resources"),
        ({**ECHO, "queue": "nowhere"}, "queue"),
        ({**ECHO, "env": {f"V{i}": "x" for i in range(129)}}, "env"),
        ({**ECHO, "env": {"A=B": "1"}}, "env"),
        ({**ECHO, "parameters": {"blob": "x" * 70_000}}, "parameters"),
        ({**ECHO, "node_selector": {f"l{i}": "x" for i in range(33)}}, "node_selector"),
        ({**ECHO, "team": "red"}, "team"),
        ({**ECHO, "colour": "blue"}, "colour"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_creates_nothing(
    api, small_node, other_team, payload, field
):
    response = api.post("/api/definitions/", payload, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert not JobDefinition.objects.exists()


def test_a_duplicate_name_is_a_400_on_name(api, definition):
    response = api.post("/api/definitions/", ECHO, format="json")
    assert response.status_code == 400
    assert response.json() == {"name": ["The team already has a definition with this name."]}
    other = api.post("/api/definitions/", {**ECHO, "name": "other"}, format="json").json()
    renamed = api.patch(f"/api/definitions/{other['id']}/", {"name": "echo"}, format="json")
    assert renamed.status_code == 400 and "name" in renamed.json()
    assert JobDefinition.objects.filter(name="echo").count() == 1


def test_another_team_may_use_the_same_name(api, outsider_api, definition):
    response = outsider_api.post("/api/definitions/", ECHO, format="json")
    assert response.status_code == 201, response.json()


def test_a_queue_of_the_team_is_accepted_and_one_of_another_team_is_not(
    api, small_node, team, other_team
):
    Queue.objects.create(name="batch").teams.add(team)
    Queue.objects.create(name="red-only").teams.add(other_team)
    ok = api.post("/api/definitions/", {**ECHO, "queue": "batch"}, format="json")
    assert ok.status_code == 201 and ok.json()["queue"] == "batch"
    refused = api.post(
        "/api/definitions/", {**ECHO, "name": "b", "queue": "red-only"}, format="json"
    )
    assert refused.json() == {"queue": ["No queue named 'red-only' that team blue may submit to."]}


def test_patch_changes_only_the_given_fields(api, definition):
    url = f"/api/definitions/{definition.pk}/"
    response = api.patch(url, {"priority": 7, "resources": {"gpu": 1}}, format="json")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["priority"] == 7
    assert body["resources"] == {"cpu": 0.5, "memory_mb": 128, "gpu": 1}
    assert body["command"] == ["echo", "hello"] and body["env"] == {"A": "1", "B": "2"}
    assert body["max_retries"] == 2


def test_patch_refuses_what_could_not_run_and_changes_nothing(api, definition):
    url = f"/api/definitions/{definition.pk}/"
    for payload, field in (
        ({"resources": {"cpu": 64}}, "resources"),
        ({"command": []}, "command"),
        ({"queue": "nowhere"}, "queue"),
        ({"team": "red"}, "team"),
        ({"kind": "callable"}, "callable"),
        ({"kind": "callable", "callable": "os.system"}, "callable"),
    ):
        response = api.patch(url, payload, format="json")
        assert response.status_code == 400, (payload, response.content)
        assert field in response.json(), (payload, response.json())
    definition.refresh_from_db()
    assert (definition.cpu_millis, definition.command, definition.kind) == (
        500,
        ["echo", "hello"],
        "command",
    )


def test_patch_may_switch_the_kind(api, definition):
    response = api.patch(
        f"/api/definitions/{definition.pk}/",
        {"kind": "callable", "callable": "jobs.callables.sleep"},
        format="json",
    )
    assert response.status_code == 200, response.json()
    definition.refresh_from_db()
    assert (definition.kind, definition.callable, definition.command) == (
        "callable",
        "jobs.callables.sleep",
        [],
    )


def test_put_replaces_the_spec(api, definition):
    response = api.put(
        f"/api/definitions/{definition.pk}/",
        {"name": "renamed", "command": ["true"]},
        format="json",
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["name"] == "renamed" and body["command"] == ["true"]
    assert body["priority"] == 0 and body["env"] == {} and body["max_retries"] == 0
    assert body["resources"] == {"cpu": 1.0, "memory_mb": 256, "gpu": 0}


def test_delete_removes_a_definition_and_keeps_the_jobs_made_from_it(api, definition):
    job_id = api.post(f"/api/definitions/{definition.pk}/submit/", {}, format="json").json()["id"]
    assert api.delete(f"/api/definitions/{definition.pk}/").status_code == 204
    assert not JobDefinition.objects.exists()
    assert Job.objects.get(pk=job_id).definition is None
    event = AuditEvent.objects.filter(action="definition.delete").get()
    assert event.object_repr == "Blue/echo" and event.team.slug == "blue"


def test_deleting_a_definition_that_schedules_use_is_a_400_and_changes_nothing(
    api, definition, team
):
    schedule_create(
        team=team, definition=definition, fields={"name": "nightly", "interval_seconds": 60}
    )
    assert api.get(f"/api/definitions/{definition.pk}/").json()["schedule_count"] == 1
    response = api.delete(f"/api/definitions/{definition.pk}/")
    assert response.status_code == 400
    assert "nightly" in response.json()["schedules"][0]
    assert JobDefinition.objects.filter(pk=definition.pk).exists()
    assert JobSchedule.objects.filter(definition=definition).count() == 1
    assert PeriodicTask.objects.filter(name__startswith="jobs.schedule.").count() == 1


def test_submit_makes_a_job_from_the_definition(api, definition):
    response = api.post(f"/api/definitions/{definition.pk}/submit/", {}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "pending" and body["name"] == "echo" and body["team"] == "blue"
    assert body["definition"] == definition.pk
    assert body["resources"] == {"cpu": 0.5, "memory_mb": 128, "gpu": 0}
    job = Job.objects.get(pk=body["id"])
    assert job.definition == definition
    assert (job.command, job.env, job.priority, job.max_retries) == (
        ["echo", "hello"],
        {"A": "1", "B": "2"},
        3,
        2,
    )
    event = AuditEvent.objects.filter(action="definition.submit").get()
    assert event.object_id == str(definition.pk)


def test_submit_merges_env_and_parameters_and_replaces_the_other_overrides(api, definition):
    response = api.post(
        f"/api/definitions/{definition.pk}/submit/",
        {
            "env": {"B": "two", "C": "3"},
            "parameters": {"y": 20},
            "priority": 9,
            "name": "echo-now",
            "not_before": "2030-01-01T00:00:00Z",
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    job = Job.objects.get(pk=response.json()["id"])
    assert job.env == {"A": "1", "B": "two", "C": "3"}
    assert job.parameters == {"x": 1, "y": 20}
    assert (job.priority, job.name, job.not_before.year) == (9, "echo-now", 2030)
    definition.refresh_from_db()
    assert definition.env == {"A": "1", "B": "2"} and definition.priority == 3


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"command": ["rm"]}, "command"),
        ({"resources": {"cpu": 1}}, "resources"),
        ({"priority": "high"}, "priority"),
        ({"env": {"A=B": "1"}}, "env"),
    ],
)
def test_submit_refuses_anything_but_the_overrides(api, definition, payload, field):
    response = api.post(f"/api/definitions/{definition.pk}/submit/", payload, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert not Job.objects.exists()


def test_a_merged_env_over_the_cap_is_refused(api, definition):
    definition.env = {f"D{i}": "x" for i in range(100)}
    definition.save()
    response = api.post(
        f"/api/definitions/{definition.pk}/submit/",
        {"env": {f"O{i}": "x" for i in range(100)}},
        format="json",
    )
    assert response.status_code == 400
    assert response.json() == {"env": ["At most 128 variables."]}
    assert not Job.objects.exists()


def test_submitting_the_same_idempotency_key_returns_the_first_job(api, definition):
    url = f"/api/definitions/{definition.pk}/submit/"
    first = api.post(url, {"idempotency_key": "run-1"}, format="json")
    again = api.post(url, {"idempotency_key": "run-1", "priority": 5}, format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"] and again.json()["priority"] == 3
    assert Job.objects.count() == 1


def test_post_jobs_with_a_definition_submits_from_it(api, definition):
    response = api.post(
        "/api/jobs/",
        {"definition": definition.pk, "env": {"C": "3"}, "idempotency_key": "k"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    job = Job.objects.get(pk=response.json()["id"])
    assert job.definition == definition and job.env == {"A": "1", "B": "2", "C": "3"}
    again = api.post(
        "/api/jobs/", {"definition": definition.pk, "idempotency_key": "k"}, format="json"
    )
    assert again.status_code == 200 and again.json()["id"] == job.pk
    inline = api.post("/api/jobs/", ECHO, format="json").json()
    assert inline["definition"] is None
    listed = api.get("/api/jobs/", {"definition": definition.pk}).json()
    assert [j["id"] for j in listed["results"]] == [job.pk]


def test_post_jobs_with_a_definition_refuses_spec_fields(api, definition):
    response = api.post(
        "/api/jobs/",
        {"definition": definition.pk, "command": ["rm", "-rf", "/"], "queue": "default"},
        format="json",
    )
    assert response.status_code == 400
    assert {"command", "queue"} <= set(response.json())
    unknown = api.post("/api/jobs/", {"definition": 999999}, format="json")
    assert unknown.status_code == 400 and "definition" in unknown.json()
    assert not Job.objects.exists()


def test_a_definition_whose_request_no_longer_fits_cannot_submit(api, definition, small_node):
    small_node.cpu_millis = 250
    small_node.save()
    response = api.post(f"/api/definitions/{definition.pk}/submit/", {}, format="json")
    assert response.status_code == 400 and "resources" in response.json()


def test_the_list_has_a_fixed_number_of_queries(
    api, small_node, team, django_assert_max_num_queries
):
    for i in range(10):
        api.post("/api/definitions/", {**ECHO, "name": f"d{i}"}, format="json")
    definition = JobDefinition.objects.first()
    schedule_create(team=team, definition=definition, fields={"name": "s", "interval_seconds": 60})
    # Authentication (1, plus at most 1 last-used update), count, page.
    with django_assert_max_num_queries(4):
        response = api.get("/api/definitions/", {"page_size": 20})
    assert len(response.json()["results"]) == 10
    assert sum(d["schedule_count"] for d in response.json()["results"]) == 1
