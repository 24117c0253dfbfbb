"""Throttles per user, per token and per address, counted in Redis: 429 with Retry-After
under a burst, and requests pass again once the window has gone by."""

import math
import secrets
import time

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from rest_framework.test import APIClient

from accounts.throttling import parse_rate
from tests.conftest import token_client

pytestmark = pytest.mark.django_db

GENEROUS = {"user": "10000/minute", "token": "10000/minute", "anon": "", "login": ""}


def wait_for_a_new_window(seconds: int):
    """Start a burst at the beginning of a counting window, so it falls in one window."""
    time.sleep(seconds * math.ceil(time.time() / seconds) - time.time() + 0.01)


def random_address() -> str:
    return "10." + ".".join(str(secrets.randbelow(250)) for _ in range(3))


def test_a_burst_over_the_token_rate_is_429_with_retry_after_and_recovers(settings, member):
    settings.API_THROTTLE_RATES = {**GENEROUS, "token": "3/4s"}
    client = token_client(member)
    wait_for_a_new_window(4)
    codes = [client.get("/api/auth/me/").status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    refused = client.get("/api/auth/me/")
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 4
    # The user's other token has its own count.
    assert token_client(member).get("/api/auth/me/").status_code == 200
    time.sleep(float(refused["Retry-After"]))
    assert client.get("/api/auth/me/").status_code == 200


def test_the_user_rate_counts_every_token_of_the_user(settings, member, outsider):
    settings.API_THROTTLE_RATES = {**GENEROUS, "user": "4/4s"}
    first, second = token_client(member), token_client(member)
    wait_for_a_new_window(4)
    codes = [c.get("/api/auth/me/").status_code for c in (first, second, first, second, first)]
    assert codes == [200, 200, 200, 200, 429]
    assert token_client(outsider).get("/api/auth/me/").status_code == 200


def test_logins_from_one_address_are_throttled(settings, member):
    settings.API_THROTTLE_RATES = {**GENEROUS, "login": "2/minute"}
    address = random_address()
    client = APIClient(REMOTE_ADDR=address)
    wrong = {"username": "alice", "password": "guess"}
    codes = [client.post("/api/auth/login/", wrong).status_code for _ in range(3)]
    assert codes == [400, 400, 429]
    refused = client.post(
        "/api/auth/login/", {"username": "alice", "password": "correct horse battery"}
    )
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 60
    # Another address is counted apart; a spoofed X-Forwarded-For is not another address.
    spoofed = APIClient(REMOTE_ADDR=address, HTTP_X_FORWARDED_FOR="192.0.2.1")
    assert spoofed.post("/api/auth/login/", wrong).status_code == 429
    other = APIClient(REMOTE_ADDR=random_address())
    assert other.post("/api/auth/login/", wrong).status_code == 400


@pytest.mark.parametrize(
    ("rate", "parsed"),
    [("600/minute", (600, 60)), ("5/s", (5, 1)), ("3/5s", (3, 5)), ("100/hour", (100, 3600))],
)
def test_rates_read_as_requests_per_period(rate, parsed):
    assert parse_rate(rate) == parsed


@pytest.mark.parametrize("rate", ["600", "ten/minute", "5/fortnight", "5/-2s"])
def test_a_bad_rate_is_a_configuration_error(rate):
    with pytest.raises(ImproperlyConfigured):
        parse_rate(rate)


def test_browser_login_attempts_share_the_login_throttle(settings, member):
    settings.API_THROTTLE_RATES = {**GENEROUS, "login": "1/minute"}
    browser = Client(REMOTE_ADDR=random_address())
    assert browser.post("/login/", {"username": "alice", "password": "x"}).status_code == 200
    refused = browser.post("/login/", {"username": "alice", "password": "correct horse battery"})
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 60


def test_requests_pass_unthrottled_while_redis_is_unreachable(settings, member):
    settings.API_THROTTLE_RATES = {**GENEROUS, "token": "1/minute"}
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }
    client = token_client(member)
    assert [client.get("/api/auth/me/").status_code for _ in range(3)] == [200, 200, 200]
