import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_healthz_answers_ok():
    assert Client().get("/healthz").json() == {"status": "ok"}


def test_readyz_checks_the_database_and_the_broker(broker):
    response = Client().get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok"}


def test_readyz_is_503_when_the_broker_is_unreachable():
    from scheduler_site.celery import app

    original = app.conf.broker_write_url
    app.conf.broker_write_url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    try:
        response = Client().get("/readyz")
    finally:
        app.conf.broker_write_url = original
    assert response.status_code == 503
    assert response.json()["broker"].startswith("error")
