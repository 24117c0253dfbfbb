"""Rules evaluated from the database: one incident (and one notification per channel) per
subject while the condition holds, a resolved notification when it clears, repeats,
snooze; deliveries retried with back-off and recorded."""

from datetime import timedelta

import pytest
from django.utils import timezone

from alerts.models import AlertDelivery, AlertIncident, AlertRule
from alerts.services import alert_rule_create, alert_rule_evaluate, delivery_attempt
from events.models import Event
from jobs.models import Job, JobDefinition, JobStatus, PendingReason
from jobs.schedules import schedule_create, schedule_fire
from jobs.scheduling.cycle import place_pending_jobs
from jobs.services.actions import job_cancel
from jobs.services.deadlines import jobs_cancel_past_deadline
from jobs.services.executions import execution_claim, execution_finish
from nodes.models import Node, NodeStatus
from tests.jobs.making import make_jobs, submit

pytestmark = pytest.mark.django_db


def make_rule(team, url, condition="job_dead_lettered", **fields):
    rule, _ = alert_rule_create(
        team=team,
        fields={"name": condition, "condition": condition, **fields},
        channels=[{"kind": "webhook", "target": url}],
        user=None,
    )
    AlertRule.objects.filter(pk=rule.pk).update(created_at=timezone.now() - timedelta(hours=1))
    return rule


def evaluate(rule, **kw):
    return alert_rule_evaluate(rule_id=rule.pk, **kw)


def fail_for_good(api, node, **extra):
    job_id = submit(api, **extra)
    token = place_pending_jobs(batch_size=10).tokens[0]
    execution_claim(token=token, node_id=node.id)
    execution_finish(token=token, exit_code=None, error="killed by signal SIGKILL")
    assert Job.objects.get(pk=job_id).status == JobStatus.FAILED
    return job_id


def deliveries(rule, kind):
    return list(AlertDelivery.objects.filter(rule=rule, kind=kind))


def test_a_dead_letter_fires_once_and_resolves_when_acknowledged(api, team, small_node, webhook):
    rule = make_rule(team, webhook.url)
    job_id = fail_for_good(api, small_node)
    assert evaluate(rule)["fired"] == 1
    assert evaluate(rule)["fired"] == 0  # the incident is open: no second notification
    [fired] = deliveries(rule, "fired")
    assert fired.payload["incident"]["key"] == f"job:{job_id}"
    assert delivery_attempt(delivery_id=fired.pk) == "delivered"
    assert webhook.of_kind("fired")[0].json["incident"]["subject"]["job"] == job_id

    api.post(f"/api/jobs/{job_id}/acknowledge/")
    assert evaluate(rule)["resolved"] == 1
    [resolved] = deliveries(rule, "resolved")
    assert resolved.incident_id == fired.incident_id
    assert list(
        Event.objects.filter(job_id=job_id, type__startswith="alert.")
        .order_by("id")
        .values_list("type", flat=True)
    ) == ["alert.fired", "alert.resolved"]


def test_filters_choose_the_jobs(api, team, small_node, webhook):
    rule = make_rule(team, webhook.url, name_pattern="nightly-*")
    fail_for_good(api, small_node, name="adhoc")
    assert evaluate(rule)["fired"] == 0
    fail_for_good(api, small_node, name="nightly-report")
    assert evaluate(rule)["fired"] == 1


def test_a_repeat_interval_notifies_again_while_it_lasts(api, team, small_node, webhook):
    rule = make_rule(team, webhook.url, repeat_interval_seconds=600)
    fail_for_good(api, small_node)
    evaluate(rule)
    assert evaluate(rule)["repeated"] == 0
    assert evaluate(rule, now=timezone.now() + timedelta(seconds=601))["repeated"] == 1
    assert len(deliveries(rule, "repeat")) == 1


def test_a_snoozed_rule_sends_nothing_until_the_snooze_ends(api, team, small_node, webhook):
    rule = make_rule(team, webhook.url)
    AlertRule.objects.filter(pk=rule.pk).update(
        snoozed_until=timezone.now() + timedelta(minutes=10)
    )
    fail_for_good(api, small_node)
    assert evaluate(rule)["fired"] == 1  # the incident opens (and its event is written)
    assert deliveries(rule, "fired") == []
    evaluate(rule, now=timezone.now() + timedelta(minutes=11))
    assert len(deliveries(rule, "fired")) == 1


def test_a_failure_ratio_fires_and_resolves(api, team, small_node, webhook):
    rule = make_rule(team, webhook.url, condition="failure_ratio", threshold=0.5)
    job_id = fail_for_good(api, small_node)
    assert evaluate(rule)["fired"] == 1
    assert AlertIncident.objects.get(rule=rule).subject == {"failed": 1, "ended": 1, "ratio": 1.0}
    api.post(f"/api/jobs/{job_id}/retry/")
    token = place_pending_jobs(batch_size=10).tokens[0]
    execution_claim(token=token, node_id=small_node.id)
    execution_finish(token=token, exit_code=0)
    assert evaluate(rule)["resolved"] == 1  # 1 of 2 is not more than a half


def test_retrying_running_long_and_queue_backlog(api, team, small_node, webhook):
    retrying = make_rule(team, webhook.url, condition="job_retrying")
    running = make_rule(team, webhook.url, condition="job_running_longer", threshold=60)
    backlog = make_rule(team, webhook.url, condition="queue_backlog_age", threshold=60)
    [long_job, waiting] = make_jobs(team, 2)
    Job.objects.filter(pk=long_job.pk).update(
        status=JobStatus.RUNNING, started_at=timezone.now() - timedelta(seconds=120)
    )
    Job.objects.filter(pk=waiting.pk).update(created_at=timezone.now() - timedelta(seconds=120))
    assert evaluate(running)["fired"] == 1
    assert evaluate(backlog)["fired"] == 1
    assert AlertIncident.objects.get(rule=backlog).dedupe_key == "queue:default"
    assert evaluate(retrying)["fired"] == 0
    Job.objects.filter(pk=waiting.pk).update(pending_reason=PendingReason.WAITING_RETRY)
    assert evaluate(retrying)["fired"] == 1


def test_a_schedule_that_skips_fires_until_a_run_goes_well(
    team, default_queue, small_node, webhook
):
    definition = JobDefinition.objects.create(
        team=team, queue=default_queue, name="d", command=["true"]
    )
    schedule = schedule_create(
        team=team,
        definition=definition,
        fields={"name": "s", "interval_seconds": 10, "concurrency_policy": "forbid"},
    )
    rule = make_rule(team, webhook.url, condition="schedule_missed", schedule_id=schedule.pk)
    first = schedule.next_fire_at
    job = schedule_fire(schedule_id=schedule.pk, now=first + timedelta(seconds=0.05)).job
    assert evaluate(rule)["fired"] == 0
    schedule_fire(schedule_id=schedule.pk, now=first + timedelta(seconds=10.05))
    assert evaluate(rule)["fired"] == 1
    Job.objects.filter(pk=job.pk).update(status=JobStatus.SUCCEEDED)
    schedule_fire(schedule_id=schedule.pk, now=first + timedelta(seconds=20.05))
    assert evaluate(rule)["resolved"] == 1


def test_a_node_offline_rule_fires_per_node(staff, webhook, db):
    rule, _ = alert_rule_create(
        team=None,
        fields={"name": "nodes", "condition": "node_offline"},
        channels=[{"kind": "webhook", "target": webhook.url}],
        user=staff,
    )
    node = Node.objects.create(name="n1", cpu_millis=1000, memory_mb=100)
    assert evaluate(rule)["fired"] == 0
    Node.objects.filter(pk=node.pk).update(status=NodeStatus.OFFLINE)
    assert evaluate(rule)["fired"] == 1
    assert Event.objects.get(type="alert.fired").node_id == node.pk
    Node.objects.filter(pk=node.pk).update(status=NodeStatus.READY)
    assert evaluate(rule)["resolved"] == 1


def test_a_failing_receiver_is_retried_with_back_off_and_each_attempt_recorded(
    api, team, small_node, webhook, settings
):
    settings.ALERT_DELIVERY_BACKOFF_SECONDS = 10
    webhook.statuses = [500, 500, 500, 200]
    rule = make_rule(team, webhook.url)
    fail_for_good(api, small_node)
    evaluate(rule)
    [delivery] = deliveries(rule, "fired")
    waits = []
    for _ in range(3):
        assert delivery_attempt(delivery_id=delivery.pk) == "pending"
        assert delivery_attempt(delivery_id=delivery.pk) is None  # not due yet
        delivery.refresh_from_db()
        waits.append(round((delivery.next_attempt_at - timezone.now()).total_seconds()))
        AlertDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    assert waits == [10, 20, 40]
    assert delivery_attempt(delivery_id=delivery.pk) == "delivered"
    delivery.refresh_from_db()
    assert delivery.attempts == 4
    assert [a["status_code"] for a in delivery.attempt_log] == [500, 500, 500, 200]
    assert len(webhook.of_kind("fired")) == 1


def test_a_delivery_gives_up_after_its_attempts(api, team, small_node, webhook, settings):
    settings.ALERT_DELIVERY_MAX_ATTEMPTS = 2
    webhook.statuses = [503]
    rule = make_rule(team, webhook.url)
    fail_for_good(api, small_node)
    evaluate(rule)
    [delivery] = deliveries(rule, "fired")
    assert delivery_attempt(delivery_id=delivery.pk) == "pending"
    AlertDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    assert delivery_attempt(delivery_id=delivery.pk) == "failed"


def test_an_email_channel_sends_through_smtp(api, team, small_node, smtp):
    rule, _ = alert_rule_create(
        team=team,
        fields={"name": "mail", "condition": "job_dead_lettered"},
        channels=[{"kind": "email", "target": "oncall@example.com"}],
        user=None,
    )
    AlertRule.objects.filter(pk=rule.pk).update(created_at=timezone.now() - timedelta(hours=1))
    job_id = fail_for_good(api, small_node)
    evaluate(rule)
    [delivery] = deliveries(rule, "fired")
    assert delivery_attempt(delivery_id=delivery.pk) == "delivered"
    [message] = smtp.messages
    assert message["To"] == "oncall@example.com"
    assert f"job {job_id}" in message["Subject"]


def test_a_job_cancelled_at_its_deadline_fires(api, team, small_node, webhook):
    rule = make_rule(team, webhook.url, condition="job_deadline_passed")
    late = submit(api, name="late", deadline=(timezone.now() + timedelta(hours=1)).isoformat())
    submit(api, name="cancelled by hand")
    Job.objects.filter(pk=late).update(deadline=timezone.now() - timedelta(seconds=1))
    assert jobs_cancel_past_deadline() == 1
    for job in Job.objects.exclude(pk=late):
        job_cancel(job=job)
    assert evaluate(rule)["fired"] == 1
    [fired] = deliveries(rule, "fired")
    assert fired.payload["incident"]["key"] == f"job:{late}"
    assert "deadline passed" in fired.payload["incident"]["summary"]
