"""`/api/alerts/`: rules with channels, checked (a 400 naming the field, nothing made),
the webhook secret shown once, team roles, test sends and the deliveries list."""

import pytest

from accounts.models import Role, User
from accounts.services import team_add_member
from alerts.models import AlertChannel, AlertDelivery, AlertRule
from alerts.services import delivery_attempt
from tests.conftest import token_client

pytestmark = pytest.mark.django_db


def rule_body(url, **extra):
    return {
        "name": "failed",
        "condition": "job_dead_lettered",
        "channels": [
            {"kind": "webhook", "target": url},
            {"kind": "email", "target": "oncall@example.com"},
        ],
        **extra,
    }


def test_the_secret_is_shown_once_and_signs_the_test_send(api, webhook):
    response = api.post("/api/alerts/", rule_body(webhook.url), format="json")
    assert response.status_code == 201, response.json()
    rule = response.json()
    hook = next(c for c in rule["channels"] if c["kind"] == "webhook")
    secret = hook["secret"]
    assert len(secret) == 64
    assert next(c for c in rule["channels"] if c["kind"] == "email")["secret"] is None
    again = api.get(f"/api/alerts/{rule['id']}/").content.decode()
    assert secret not in again
    assert secret not in api.get("/api/alerts/").content.decode()

    sent = api.post(f"/api/alerts/{rule['id']}/test/")
    assert sent.status_code == 202
    assert {d["kind"] for d in sent.json()} == {"test"}
    delivery = AlertDelivery.objects.get(rule_id=rule["id"], channel__kind="webhook")
    assert delivery_attempt(delivery_id=delivery.pk) == "delivered"
    assert delivery_attempt(delivery_id=delivery.pk) is None  # done: not sent twice
    [received] = webhook.requests
    assert received.signed_with(secret)
    assert not received.signed_with("0" * 64)
    assert received.json["kind"] == "test"
    assert received.headers["X-Scheduler-Delivery"] == str(delivery.pk)

    listed = api.get(f"/api/alerts/{rule['id']}/deliveries/").json()["results"]
    webhook_delivery = next(d for d in listed if d["channel"]["kind"] == "webhook")
    assert (webhook_delivery["status"], webhook_delivery["attempts"]) == ("delivered", 1)
    assert webhook_delivery["attempt_log"][0]["status_code"] == 200


def test_changing_the_channels_keeps_the_secret_of_those_kept(api, webhook):
    rule = api.post("/api/alerts/", rule_body(webhook.url), format="json").json()
    kept = AlertChannel.objects.get(rule_id=rule["id"], kind="webhook")
    response = api.patch(
        f"/api/alerts/{rule['id']}/",
        {"channels": [{"kind": "webhook", "target": webhook.url}], "enabled": False},
        format="json",
    )
    assert response.status_code == 200, response.json()
    assert [c["secret"] for c in response.json()["channels"]] == [None]
    assert AlertChannel.objects.get(rule_id=rule["id"]).secret == kept.secret
    assert response.json()["enabled"] is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"channels": [{"kind": "webhook", "target": "http://169.254.169.254/latest"}]},
            "channels",
        ),
        ({"channels": [{"kind": "webhook", "target": "ftp://example.com/"}]}, "channels"),
        ({"channels": [{"kind": "email", "target": "not-an-address"}]}, "channels"),
        ({"channels": []}, "channels"),
        ({"condition": "failure_ratio"}, "threshold"),
        ({"condition": "failure_ratio", "threshold": 2}, "threshold"),
        ({"condition": "job_running_longer", "threshold": -1}, "threshold"),
        ({"condition": "nope"}, "condition"),
        ({"queue": "no-such-queue"}, "queue"),
        ({"definition": 999999}, "definition"),
        ({"schedule": 999999}, "schedule"),
        ({"team": "red"}, "team"),
        ({"repeat_interval_seconds": 1}, "repeat_interval_seconds"),
    ],
)
def test_bad_rules_are_a_400_naming_the_field_and_nothing_is_made(
    api, webhook, outsider, body, field
):
    response = api.post("/api/alerts/", rule_body(webhook.url, **body), format="json")
    assert response.status_code == 400, response.json()
    assert field in response.json()
    assert not AlertRule.objects.exists()


def test_link_local_webhooks_are_allowed_only_by_the_setting(api, settings):
    body = rule_body("http://169.254.169.254/hook")
    assert api.post("/api/alerts/", body, format="json").status_code == 400
    settings.ALERT_WEBHOOK_ALLOW_LINK_LOCAL = True
    assert api.post("/api/alerts/", body, format="json").status_code == 201


def test_viewers_read_members_manage_outsiders_see_nothing(api, team, outsider_api, webhook):
    rule = api.post("/api/alerts/", rule_body(webhook.url), format="json").json()
    viewer = User.objects.create_user("vic", password="correct horse battery")
    team_add_member(team=team, user=viewer, role=Role.VIEWER)
    viewer_api = token_client(viewer)
    assert viewer_api.get(f"/api/alerts/{rule['id']}/").status_code == 200
    assert viewer_api.patch(f"/api/alerts/{rule['id']}/", {"enabled": False}).status_code == 403
    assert (
        viewer_api.post(
            "/api/alerts/", rule_body(webhook.url, team="blue"), format="json"
        ).status_code
        == 403
    )
    assert outsider_api.get("/api/alerts/").json()["results"] == []
    for call in (outsider_api.get, outsider_api.delete):
        assert call(f"/api/alerts/{rule['id']}/").status_code == 404
    assert outsider_api.post(f"/api/alerts/{rule['id']}/test/").status_code == 404
    assert outsider_api.get(f"/api/alerts/{rule['id']}/deliveries/").status_code == 404
    assert api.delete(f"/api/alerts/{rule['id']}/").status_code == 204


def test_node_rules_are_staff_rules(api, staff_api, webhook):
    body = rule_body(webhook.url, condition="node_offline", name="nodes")
    assert api.post("/api/alerts/", body, format="json").status_code == 403
    response = staff_api.post("/api/alerts/", body, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["team"] is None
    assert api.get(f"/api/alerts/{response.json()['id']}/").status_code == 404
