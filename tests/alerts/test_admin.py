"""The admin lists events, alert rules (their channels without the secret), incidents and
deliveries, with their filters; events and deliveries are read-only records."""

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import User
from alerts.models import AlertDelivery, AlertIncident
from alerts.services import alert_rule_create, alert_rule_test
from events.models import EventType
from events.services import event_record

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(db):
    client = Client()
    client.force_login(User.objects.create_superuser("boss", password="correct horse battery"))
    return client


def test_every_page_and_filter_answers_and_no_secret_shows(admin_client, team):
    rule, secrets = alert_rule_create(
        team=team,
        fields={"name": "ADMIN-RULE", "condition": "job_dead_lettered"},
        channels=[{"kind": "webhook", "target": "http://127.0.0.1:9/hook"}],
        user=None,
    )
    [secret] = secrets.values()
    alert_rule_test(rule=rule)
    AlertIncident.objects.create(
        rule=rule, dedupe_key="job:1", summary="s", opened_at=timezone.now()
    )
    event_record(type=EventType.NODE_OFFLINE, message="ADMIN-EVENT", node_id=1)
    delivery = AlertDelivery.objects.get()
    pages = [
        "/admin/events/event/",
        "/admin/events/event/?type__exact=node.offline",
        "/admin/alerts/alertrule/",
        "/admin/alerts/alertrule/?condition__exact=job_dead_lettered",
        f"/admin/alerts/alertrule/{rule.pk}/change/",
        "/admin/alerts/alertincident/?resolved_at__isempty=1",
        "/admin/alerts/alertdelivery/?status__exact=pending",
        f"/admin/alerts/alertdelivery/{delivery.pk}/change/",
    ]
    for page in pages:
        response = admin_client.get(page)
        assert response.status_code == 200, page
        assert secret not in response.content.decode(), page
    assert "ADMIN-EVENT" in admin_client.get("/admin/events/event/").content.decode()
    assert "ADMIN-RULE" in admin_client.get("/admin/alerts/alertrule/").content.decode()
    assert admin_client.get("/admin/events/event/add/").status_code == 403
