"""Alerts with real processes: beat evaluates the rules on the control worker, which
sends to real receivers (an HTTP server and an SMTP server in the test)."""

import os
import signal
import time

import pytest

from alerts.models import AlertDelivery
from jobs.models import Job, JobStatus
from tests.alerts.receivers import WebhookReceiver
from tests.processes import wait_until

pytestmark = pytest.mark.e2e


def make_rule(api, **body):
    response = api.post("/api/alerts/", body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def test_a_sigkilled_job_alerts_once_by_webhook_and_email_then_resolves(
    cluster, api, webhook, smtp_server, tmp_path
):
    cluster.env |= {"EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(smtp_server.port)}
    dead = make_rule(
        api,
        name="dead letters",
        condition="job_dead_lettered",
        channels=[
            {"kind": "webhook", "target": webhook.url},
            {"kind": "email", "target": "oncall@example.com"},
        ],
    )
    secret = next(c["secret"] for c in dead["channels"] if c["kind"] == "webhook")
    ratio = make_rule(
        api,
        name="failure ratio",
        condition="failure_ratio",
        threshold=0.5,
        channels=[{"kind": "webhook", "target": webhook.url}],
    )
    cluster.start_maintenance()
    cluster.start_node("node-a", cpu=1)
    cluster.start_scheduler()
    first, pid_file = tmp_path / "first", tmp_path / "pid"
    job_id = api.post(
        "/api/jobs/",
        {
            "name": "victim",
            "command": [
                "sh",
                "-c",
                f"if [ -e {first} ]; then exit 0; fi; touch {first}; echo $$ > {pid_file}; "
                "sleep 60",
            ],
            "max_retries": 0,
        },
        format="json",
    ).json()["id"]
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 20, message="the job")
    os.kill(int(pid_file.read_text()), signal.SIGKILL)

    wait_until(lambda: webhook.of_kind("fired", dead["id"]), 30, message="the webhook")
    wait_until(lambda: smtp_server.messages, 30, message="the e-mail")
    wait_until(lambda: webhook.of_kind("fired", ratio["id"]), 30, message="the ratio alert")
    assert Job.objects.get(pk=job_id).status == JobStatus.FAILED
    # Beat evaluates every second: several evaluations later, still one notification per
    # channel for the one incident.
    evaluated = AlertDelivery.objects.count()
    time.sleep(3)
    assert AlertDelivery.objects.count() == evaluated == 3
    [received] = webhook.of_kind("fired", dead["id"])
    assert received.signed_with(secret)
    assert received.json["incident"]["subject"]["job"] == job_id
    [email] = smtp_server.messages
    assert email["To"] == "oncall@example.com"
    assert f"job {job_id} victim: failed for good" in email["Subject"]

    assert api.post(f"/api/jobs/{job_id}/retry/").status_code == 200
    wait_until(
        lambda: Job.objects.get(pk=job_id).status == JobStatus.SUCCEEDED, 30, message="success"
    )
    wait_until(lambda: webhook.of_kind("resolved", ratio["id"]), 30, message="the resolved one")
    [resolved] = webhook.of_kind("resolved", ratio["id"])
    assert resolved.json["incident"]["subject"] == {"failed": 1, "ended": 1, "ratio": 1.0}
    assert len(webhook.of_kind("fired", ratio["id"])) == 1


def test_retries_reach_a_flaky_receiver_once_and_a_hung_one_delays_no_job(cluster, api, tmp_path):
    flaky = WebhookReceiver(statuses=[500, 500, 500, 200])
    hung = WebhookReceiver(hang=True)
    try:
        cluster.env["ALERT_DELIVERY_TIMEOUT_SECONDS"] = "60"
        rules = [
            make_rule(
                api,
                name=name,
                condition="job_dead_lettered",
                channels=[{"kind": "webhook", "target": receiver.url}],
            )
            for name, receiver in (("flaky", flaky), ("hung", hung))
        ]
        cluster.start_maintenance()
        cluster.start_node("node-a", cpu=2, slots=4)
        cluster.start_scheduler()
        for rule in rules:
            assert api.post(f"/api/alerts/{rule['id']}/test/").status_code == 202

        def flaky_delivery():
            [delivery] = api.get(f"/api/alerts/{rules[0]['id']}/deliveries/").json()["results"]
            return delivery if delivery["status"] == "delivered" else None

        delivery = wait_until(flaky_delivery, 30, message="the flaky receiver's delivery")
        assert delivery["attempts"] == 4
        assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 500, 500, 200]
        assert len(flaky.of_kind("test")) == 1

        wait_until(lambda: hung.waiting, 10, message="the hung receiver to hold a request")
        ids = [
            api.post("/api/jobs/", {"name": f"j{i}", "command": ["true"]}, format="json").json()[
                "id"
            ]
            for i in range(20)
        ]
        wait_until(
            lambda: Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).count() == 20,
            60,
            message="the jobs",
        )
        # Every job ran while the notification was still waiting for its receiver.
        assert hung.waiting == 1
        [waiting] = AlertDelivery.objects.filter(rule_id=rules[1]["id"])
        assert waiting.status == "sending"
        waits = sorted(
            (j.started_at - j.created_at).total_seconds() for j in Job.objects.filter(pk__in=ids)
        )
        print(f"submit to start with a hung receiver: p50 {waits[10]:.3f} s, max {waits[-1]:.3f} s")
    finally:
        flaky.close()
        hung.close()
