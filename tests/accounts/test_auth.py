from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiToken

pytestmark = pytest.mark.django_db


def login(username="alice", password="correct horse battery"):
    return APIClient().post("/api/auth/login/", {"username": username, "password": password})


def test_login_returns_a_token_that_authenticates(member):
    response = login()
    assert response.status_code == 200
    key = response.json()["token"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    me = client.get("/api/auth/me/").json()
    assert me["username"] == "alice"
    assert me["teams"] == [{"slug": "blue", "name": "Blue", "role": "member"}]


def test_the_database_holds_no_usable_secret(member):
    key = login().json()["token"]
    token = ApiToken.objects.get()
    stored = " ".join(str(v) for v in ApiToken.objects.values().get().values())
    assert key not in stored
    assert key.split(".", 1)[1] not in stored
    assert token.digest != key


def test_a_wrong_password_is_a_400(member):
    response = login(password="nope")
    assert response.status_code == 400
    assert "non_field_errors" in response.json()


def test_logout_revokes_the_token(member):
    key = login().json()["token"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.post("/api/auth/logout/").status_code == 204
    assert client.get("/api/auth/me/").status_code == 401


def test_an_expired_token_answers_401(member):
    key = login().json()["token"]
    ApiToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/auth/me/").status_code == 401


def test_a_token_with_the_right_prefix_and_wrong_secret_answers_401(member):
    key = login().json()["token"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key.split('.')[0]}.forged")
    assert client.get("/api/auth/me/").status_code == 401
