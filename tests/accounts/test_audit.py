"""The audit log: every state-changing request and admin action writes an AuditEvent, with
nothing secret in it; /api/audit/ shows team admins their teams' events."""

import json

import pytest
from django.contrib import admin
from django.test import Client
from rest_framework.test import APIClient

from accounts.audit import AuditedModelAdmin, redact
from accounts.models import ApiToken, AuditEvent, Role, Team, User
from accounts.services import team_add_member
from jobs.models import Job
from nodes.services import node_credential_issue
from tests.conftest import token_client

pytestmark = pytest.mark.django_db

ECHO = {"name": "hello", "command": ["echo", "hello"]}


@pytest.fixture
def team_admin(team):
    user = User.objects.create_user("ada", password="correct horse battery")
    team_add_member(team=team, user=user, role=Role.ADMIN)
    return user


@pytest.fixture
def viewer(team):
    user = User.objects.create_user("victor", password="correct horse battery")
    team_add_member(team=team, user=user, role=Role.VIEWER)
    return user


def everything_stored() -> str:
    return json.dumps(list(AuditEvent.objects.values()), default=str)


def test_a_submission_is_recorded_with_actor_token_team_address_and_change(
    api, member, team, small_node
):
    env = {"MODE": "fast", "DB_PASSWORD": "hunter2", "API_KEY": "k-123", "aws_secret": "s3"}
    response = api.post(
        "/api/jobs/", {**ECHO, "env": env}, format="json", REMOTE_ADDR="198.51.100.7"
    )
    assert response.status_code == 201
    event = AuditEvent.objects.get()
    assert (event.action, event.outcome, event.status_code) == ("job.create", "succeeded", 201)
    assert (event.actor, event.actor_name, event.team) == (member, "alice", team)
    assert event.token == ApiToken.objects.get(user=member)
    assert (event.object_type, event.object_id) == ("job", str(response.json()["id"]))
    assert event.object_repr == "hello"
    assert event.remote_addr == "198.51.100.7"
    assert (event.method, event.path) == ("POST", "/api/jobs/")
    assert event.change["env"] == {
        "MODE": "fast",
        "DB_PASSWORD": "[redacted]",
        "API_KEY": "[redacted]",
        "aws_secret": "[redacted]",
    }
    assert event.change["command"] == ["echo", "hello"]
    for secret in ("hunter2", "k-123", '"s3"'):
        assert secret not in everything_stored()


def test_reads_and_refused_input_are_not_recorded(api, small_node):
    assert api.get("/api/jobs/").status_code == 200
    refused = api.post("/api/jobs/", {"name": "x"}, format="json")
    assert (refused.status_code, refused.json()) == (400, {"command": ["This field is required."]})
    assert not Job.objects.exists()
    assert api.get("/api/jobs/12345/").status_code == 404
    assert not AuditEvent.objects.exists()


def test_a_viewers_refused_cancel_is_recorded_as_denied_for_the_team(api, viewer, team, small_node):
    job_id = api.post("/api/jobs/", ECHO, format="json").json()["id"]
    assert token_client(viewer).post(f"/api/jobs/{job_id}/cancel/").status_code == 403
    event = AuditEvent.objects.get(action="job.cancel")
    assert (event.outcome, event.status_code, event.actor) == ("denied", 403, viewer)
    assert (event.team, event.object_id) == (team, str(job_id))
    assert Job.objects.get(pk=job_id).status == "pending"


def test_logins_are_recorded_without_the_password_or_the_token(member):
    client = APIClient()
    client.post("/api/auth/login/", {"username": "alice", "password": "not-it"})
    key = client.post(
        "/api/auth/login/", {"username": "alice", "password": "correct horse battery"}
    ).json()["token"]
    failed, succeeded = AuditEvent.objects.order_by("id")
    assert (failed.action, failed.outcome, failed.actor) == ("auth.login_failed", "failed", None)
    assert failed.change == {"username": "alice"}
    assert (succeeded.action, succeeded.actor, succeeded.object_type) == (
        "auth.login",
        member,
        "apitoken",
    )
    stored = everything_stored()
    assert "not-it" not in stored and "correct horse" not in stored
    assert key not in stored and key.split(".")[1] not in stored


def test_token_creation_and_revocation_are_recorded_without_the_key(api, member):
    created = api.post("/api/auth/tokens/", {"name": "ci"}, format="json").json()
    api.delete(f"/api/auth/tokens/{created['id']}/")
    actions = list(AuditEvent.objects.order_by("id").values_list("action", "object_id"))
    assert actions == [("token.create", str(created["id"])), ("token.delete", str(created["id"]))]
    assert created["token"].split(".")[1] not in everything_stored()


def test_node_registration_is_recorded_for_the_node_and_heartbeats_are_not(db):
    key = node_credential_issue(node_name="node-a")[1]
    agent = APIClient()
    agent.credentials(HTTP_AUTHORIZATION=f"Node {key}")
    spec = {"name": "node-a", "cpu": 1, "memory_mb": 512}
    assert agent.post("/api/nodes/register/", spec, format="json").status_code == 200
    assert agent.post("/api/nodes/node-a/heartbeat/", {}, format="json").status_code == 200
    event = AuditEvent.objects.get()
    assert (event.action, event.actor, event.actor_name) == ("node.register", None, "node:node-a")
    assert event.object_repr == "node-a"


def test_admin_changes_and_deletions_are_recorded(staff, team):
    staff.is_superuser = True
    staff.save()
    browser = Client()
    browser.force_login(staff)
    response = browser.post(
        f"/admin/accounts/team/{team.pk}/change/",
        {
            "name": "Navy",
            "slug": "blue",
            "fair_share_weight": "1",
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
            "memberships-MIN_NUM_FORMS": "0",
            "memberships-MAX_NUM_FORMS": "1000",
        },
        REMOTE_ADDR="203.0.113.9",
    )
    assert response.status_code == 302, response.content[:500]
    change = AuditEvent.objects.get(action="admin.change")
    assert (change.actor, change.team, change.object_type) == (staff, team, "team")
    assert change.remote_addr == "203.0.113.9"
    assert "name" in json.dumps(change.change).lower()
    other = Team.objects.create(name="Gone", slug="gone")
    response = browser.post(f"/admin/accounts/team/{other.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    deleted = AuditEvent.objects.get(action="admin.delete")
    assert (deleted.object_repr, deleted.object_id) == ("Gone", str(other.pk))


def test_a_password_changed_in_the_admin_is_not_recorded(staff, member):
    staff.is_superuser = True
    staff.save()
    browser = Client()
    browser.force_login(staff)
    response = browser.post(
        f"/admin/accounts/user/{member.pk}/password/",
        {"password1": "brand new secret 42", "password2": "brand new secret 42"},
    )
    assert response.status_code == 302, response.content[:500]
    assert AuditEvent.objects.filter(action="admin.change", object_id=str(member.pk)).exists()
    assert "brand new secret" not in everything_stored()


def test_every_admin_of_the_projects_models_is_audited():
    ours = {"accounts", "jobs", "nodes", "resources"}
    unaudited = [
        type(model_admin).__name__
        for model, model_admin in admin.site._registry.items()
        if model._meta.app_label in ours
        and model._meta.model_name != "auditevent"
        and not isinstance(model_admin, AuditedModelAdmin)
    ]
    assert unaudited == []


def test_redact_hides_secret_looking_keys_at_any_depth():
    data = {
        "name": "x",
        "password": "p",
        "nested": [{"Token": "t", "ok": 1}],
        "env": {"GITHUB_TOKEN": "g", "PRIVATE_KEY": "k", "idempotency_key": "i"},
    }
    assert redact(data) == {
        "name": "x",
        "password": "[redacted]",
        "nested": [{"Token": "[redacted]", "ok": 1}],
        "env": {"GITHUB_TOKEN": "[redacted]", "PRIVATE_KEY": "[redacted]", "idempotency_key": "i"},
    }


# --- /api/audit/ ------------------------------------------------------------------------


@pytest.fixture
def events(api, outsider_api, small_node, team, other_team):
    api.post("/api/jobs/", {**ECHO, "name": "blue-one"}, format="json")
    api.post("/api/jobs/", {**ECHO, "name": "blue-two"}, format="json")
    outsider_api.post("/api/jobs/", {**ECHO, "name": "red-one"}, format="json")
    api.post("/api/auth/tokens/", {"name": "no-team"}, format="json")


def test_team_admins_see_their_teams_events_only(team_admin, events):
    body = token_client(team_admin).get("/api/audit/").json()
    assert body["count"] == 2
    assert [e["object_repr"] for e in body["results"]] == ["blue-two", "blue-one"]
    assert {e["team"] for e in body["results"]} == {"blue"}
    assert body["results"][0]["actor"] == "alice"


def test_staff_see_every_event(staff_api, events):
    assert staff_api.get("/api/audit/").json()["count"] == 4


def test_members_viewers_and_anonymous_may_not_read_the_audit_log(api, viewer, events):
    assert api.get("/api/audit/").status_code == 403
    assert token_client(viewer).get("/api/audit/").status_code == 403
    assert APIClient().get("/api/audit/").status_code == 401


def test_the_audit_log_filters_by_team_action_and_actor(staff_api, events):
    def names(**query):
        return sorted(
            e["object_repr"] for e in staff_api.get("/api/audit/", query).json()["results"]
        )

    assert names(team="red") == ["red-one"]
    assert [n.split()[0] for n in names(action="token.create")] == ["no-team"]
    assert names(actor="mallory") == ["red-one"]
    assert names(actor="alice", action="job.create") == ["blue-one", "blue-two"]
    assert staff_api.get("/api/audit/", {"page_size": 1}).json()["count"] == 4


def test_a_bad_audit_filter_is_a_400(staff_api, events):
    response = staff_api.get("/api/audit/", {"after": "last tuesday"})
    assert response.status_code == 400
    assert "after" in response.json()


def test_the_audit_list_has_a_fixed_number_of_queries(
    team_admin, events, django_assert_max_num_queries
):
    client = token_client(team_admin)
    with django_assert_max_num_queries(6):
        assert client.get("/api/audit/").status_code == 200


def test_browser_logins_and_failures_are_recorded(member):
    browser = Client()
    browser.post("/login/", {"username": "alice", "password": "wrong one"})
    browser.post("/login/", {"username": "alice", "password": "correct horse battery"})
    failed, logged_in = AuditEvent.objects.order_by("id")
    assert (failed.action, failed.change) == ("auth.login_failed", {"username": "alice"})
    assert (logged_in.action, logged_in.actor) == ("auth.session_login", member)
    assert "wrong one" not in everything_stored()
