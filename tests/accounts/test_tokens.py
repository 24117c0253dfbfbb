"""/api/auth/tokens/: list, create (the key shown once) and revoke; what the database keeps."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiToken
from tests.conftest import token_client

pytestmark = pytest.mark.django_db


def with_key(key) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def test_a_created_token_is_shown_once_and_authenticates(api, member):
    response = api.post("/api/auth/tokens/", {"name": "nightly"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    key = body["token"]
    assert body["name"] == "nightly" and body["user"] == "alice" and body["expires_at"] is None
    assert key.startswith(body["prefix"] + ".")
    assert with_key(key).get("/api/auth/me/").json()["username"] == "alice"
    listed = api.get("/api/auth/tokens/").json()["results"]
    assert {t["name"] for t in listed} == {"nightly", "test"}
    assert key not in str(listed) and key.split(".")[1] not in str(listed)
    assert "digest" not in listed[0] and "token" not in listed[0]
    detail = api.get(f"/api/auth/tokens/{body['id']}/").json()
    assert "token" not in detail and "digest" not in detail


def test_nothing_stored_for_a_token_authenticates(api, member):
    key = api.post("/api/auth/tokens/", {"name": "ci"}, format="json").json()["token"]
    row = ApiToken.objects.get(name="ci")
    stored = " ".join(str(value) for value in ApiToken.objects.values().get(pk=row.pk).values())
    assert key not in stored and key.split(".", 1)[1] not in stored
    for forged in (row.digest, f"{row.prefix}.{row.digest}", row.prefix, f"{row.prefix}."):
        assert with_key(forged).get("/api/auth/me/").status_code == 401


def test_a_revoked_token_answers_401_and_stays_listed(api, member):
    created = api.post("/api/auth/tokens/", {"name": "ci"}, format="json").json()
    assert api.delete(f"/api/auth/tokens/{created['id']}/").status_code == 204
    assert with_key(created["token"]).get("/api/auth/me/").status_code == 401
    listed = {t["name"]: t for t in api.get("/api/auth/tokens/").json()["results"]}
    assert listed["ci"]["revoked_at"] is not None
    assert listed["test"]["revoked_at"] is None


def test_a_token_past_its_expiry_answers_401(api, member):
    soon = timezone.now() + timedelta(seconds=30)
    created = api.post(
        "/api/auth/tokens/", {"name": "short", "expires_at": soon.isoformat()}, format="json"
    ).json()
    client = with_key(created["token"])
    assert client.get("/api/auth/me/").status_code == 200
    ApiToken.objects.filter(pk=created["id"]).update(expires_at=timezone.now())
    assert client.get("/api/auth/me/").status_code == 401


def test_logout_revokes_only_the_token_it_came_with(api, member):
    other = api.post("/api/auth/tokens/", {"name": "ci"}, format="json").json()["token"]
    assert api.post("/api/auth/logout/").status_code == 204
    assert api.get("/api/auth/me/").status_code == 401
    assert with_key(other).get("/api/auth/me/").status_code == 200


def test_someone_elses_token_is_404_and_stays_live(api, outsider):
    theirs = token_client(outsider)
    their_id = ApiToken.objects.get(user=outsider).pk
    assert api.get(f"/api/auth/tokens/{their_id}/").status_code == 404
    assert api.delete(f"/api/auth/tokens/{their_id}/").status_code == 404
    assert theirs.get("/api/auth/me/").status_code == 200
    assert all(t["user"] == "alice" for t in api.get("/api/auth/tokens/").json()["results"])


def test_staff_list_and_revoke_everyones_tokens(staff_api, outsider):
    theirs = token_client(outsider)
    their_id = ApiToken.objects.get(user=outsider).pk
    users = {t["user"] for t in staff_api.get("/api/auth/tokens/").json()["results"]}
    assert users == {"root", "mallory"}
    assert staff_api.delete(f"/api/auth/tokens/{their_id}/").status_code == 204
    assert theirs.get("/api/auth/me/").status_code == 401


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "ci", "expires_at": "soon"}, "expires_at"),
        ({"name": "ci", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "ci", "scopes": ["all"]}, "scopes"),
        ({"name": ["ci"]}, "name"),
        ({"name": None}, "name"),
        (["ci"], "non_field_errors"),
    ],
)
def test_bad_token_input_is_a_400_naming_the_field(api, member, payload, field):
    response = api.post("/api/auth/tokens/", payload, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert ApiToken.objects.count() == 1


def test_a_session_needs_the_csrf_token_for_changes(member):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(member)
    assert browser.get("/api/auth/me/").json()["username"] == "alice"
    refused = browser.post("/api/auth/tokens/", {"name": "web"}, content_type="application/json")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]
    assert ApiToken.objects.filter(name="web").count() == 0
    browser.get("/login/")  # a page with a form sets the CSRF cookie
    csrf = browser.cookies["csrftoken"].value
    accepted = browser.post(
        "/api/auth/tokens/",
        {"name": "web"},
        content_type="application/json",
        headers={"X-CSRFToken": csrf},
    )
    assert accepted.status_code == 201, accepted.content


def test_members_log_in_to_the_browser_with_a_csrf_protected_form(member):
    browser = Client(enforce_csrf_checks=True)
    form = browser.get("/login/")
    assert form.status_code == 200
    credentials = {"username": "alice", "password": "correct horse battery"}
    assert browser.post("/login/", credentials).status_code == 403  # no CSRF token
    credentials["csrfmiddlewaretoken"] = browser.cookies["csrftoken"].value
    response = browser.post("/login/", credentials)
    assert (response.status_code, response["Location"]) == (302, "/")
    assert browser.get("/").status_code == 200
    assert browser.get("/api/auth/me/").json()["username"] == "alice"


def test_logout_with_a_session_ends_the_session(member):
    browser = Client()
    browser.force_login(member)
    assert browser.post("/api/auth/logout/").status_code == 204
    assert browser.get("/api/auth/me/").status_code == 401
