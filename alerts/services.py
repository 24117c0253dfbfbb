"""Writes for alerts: rules and their channels, evaluating the rules (incidents opened
and resolved, their notifications queued), and delivering notifications with retries.

Notifications are rows (`AlertDelivery`) written in the transaction that opened or
resolved the incident; the send is queued on commit, claimed with a conditional UPDATE
(so two workers never send the same attempt), and done outside any transaction.
"""

import logging
import secrets as secrets_module
from datetime import datetime, timedelta

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import Team, User
from events.models import EventType
from events.services import event_record

from .conditions import Firing, condition_firings
from .models import (
    AlertChannel,
    AlertDelivery,
    AlertIncident,
    AlertRule,
    ChannelKind,
    DeliveryKind,
    DeliveryStatus,
)
from .sending import send

logger = logging.getLogger(__name__)

RULE_FIELDS = (
    "name",
    "condition",
    "threshold",
    "window_seconds",
    "queue",
    "definition_id",
    "schedule_id",
    "name_pattern",
    "repeat_interval_seconds",
    "snoozed_until",
    "enabled",
)


# --- Rules and channels ---------------------------------------------------------------


def _channels_replace(rule: AlertRule, channels: list[dict]) -> dict[int, str]:
    """Make the rule's channels exactly `channels` ({kind, target}); those kept keep their
    secret. Returns {channel id: secret} of the new webhook channels (shown once)."""
    wanted = {(c["kind"], c["target"]) for c in channels}
    existing = {(c.kind, c.target): c for c in rule.channels.all()}
    rule.channels.exclude(pk__in=[c.pk for k, c in existing.items() if k in wanted]).delete()
    new_secrets = {}
    for kind, target in sorted(wanted - existing.keys()):
        secret = secrets_module.token_hex(32) if kind == ChannelKind.WEBHOOK else ""
        channel = AlertChannel.objects.create(rule=rule, kind=kind, target=target, secret=secret)
        if secret:
            new_secrets[channel.pk] = secret
    return new_secrets


@transaction.atomic
def alert_rule_create(
    *, team: Team | None, fields: dict, channels: list[dict], user: User | None
) -> tuple[AlertRule, dict[int, str]]:
    rule = AlertRule.objects.create(team=team, created_by=user, **fields)
    return rule, _channels_replace(rule, channels)


@transaction.atomic
def alert_rule_update(
    *, rule: AlertRule, fields: dict, channels: list[dict] | None
) -> tuple[AlertRule, dict[int, str]]:
    for name, value in fields.items():
        setattr(rule, name, value)
    rule.save()
    new_secrets = _channels_replace(rule, channels) if channels is not None else {}
    return rule, new_secrets


def alert_rule_delete(*, rule: AlertRule) -> None:
    rule.delete()


# --- Notifications ---------------------------------------------------------------------


def _payload(rule: AlertRule, kind: str, incident: AlertIncident | None, now) -> dict:
    return {
        "kind": kind,
        "at": now.isoformat(),
        "rule": {"id": rule.pk, "name": rule.name, "condition": rule.condition},
        "team": rule.team.slug if rule.team_id else None,
        "incident": None
        if incident is None
        else {
            "id": incident.pk,
            "key": incident.dedupe_key,
            "summary": incident.summary,
            "subject": incident.subject,
            "opened_at": incident.opened_at.isoformat(),
            "resolved_at": incident.resolved_at.isoformat() if incident.resolved_at else None,
        },
    }


def _notify(rule: AlertRule, kind: str, incident: AlertIncident | None, now) -> list[int]:
    """One delivery per channel, sent once the caller's transaction commits."""
    payload = _payload(rule, kind, incident, now)
    deliveries = AlertDelivery.objects.bulk_create(
        AlertDelivery(
            rule=rule,
            channel=channel,
            incident=incident,
            kind=kind,
            payload=payload,
            next_attempt_at=now,
        )
        for channel in rule.channels.all()
    )
    ids = [d.pk for d in deliveries]
    if incident is not None:
        AlertIncident.objects.filter(pk=incident.pk).update(last_notified_at=now)
    transaction.on_commit(lambda: deliveries_queue(ids))
    return ids


DELIVER_TASK = "alerts.deliver_alert"


def deliveries_queue(ids: list[int], *, countdown: float = 0) -> None:
    for delivery_id in ids:
        current_app.send_task(DELIVER_TASK, args=[delivery_id], countdown=countdown)


def alert_rule_test(*, rule: AlertRule) -> list[int]:
    """A test notification to each of the rule's channels."""
    with transaction.atomic():
        return _notify(rule, DeliveryKind.TEST, None, timezone.now())


def retry_delay_seconds(attempts: int) -> float:
    return min(
        settings.ALERT_DELIVERY_BACKOFF_SECONDS * 2 ** (attempts - 1),
        settings.ALERT_DELIVERY_BACKOFF_CAP_SECONDS,
    )


def delivery_attempt(*, delivery_id: int) -> str | None:
    """Try a due delivery once; its status after, or None when it was not due (another
    worker has it, or it is done). A failed attempt is retried with back-off until
    ALERT_DELIVERY_MAX_ATTEMPTS."""
    now = timezone.now()
    # The claim: exactly one worker moves it from pending to sending. The lease (its new
    # next_attempt_at) lets the sweep take it back if this worker dies while sending.
    lease = now + timedelta(seconds=settings.ALERT_DELIVERY_TIMEOUT_SECONDS * 3 + 5)
    claimed = AlertDelivery.objects.filter(
        pk=delivery_id, status=DeliveryStatus.PENDING, next_attempt_at__lte=now
    ).update(status=DeliveryStatus.SENDING, next_attempt_at=lease)
    if not claimed:
        return None
    delivery = AlertDelivery.objects.select_related("channel").get(pk=delivery_id)
    outcome = send(channel=delivery.channel, payload=delivery.payload, delivery_id=delivery_id)
    done = timezone.now()
    delivery.attempts += 1
    delivery.attempt_log = [
        *delivery.attempt_log,
        {"at": done.isoformat(), "status_code": outcome.status_code, "error": outcome.error},
    ]
    if outcome.ok:
        delivery.status, delivery.delivered_at = DeliveryStatus.DELIVERED, done
    elif delivery.attempts >= settings.ALERT_DELIVERY_MAX_ATTEMPTS:
        delivery.status = DeliveryStatus.FAILED
    else:
        delivery.status = DeliveryStatus.PENDING
        delay = retry_delay_seconds(delivery.attempts)
        delivery.next_attempt_at = done + timedelta(seconds=delay)
    delivery.save(
        update_fields=["status", "attempts", "attempt_log", "delivered_at", "next_attempt_at"]
    )
    logger.info(
        "alert delivery id=%s rule=%s channel=%s kind=%s attempt=%s status=%s error=%r",
        delivery.pk,
        delivery.rule_id,
        delivery.channel.kind,
        delivery.kind,
        delivery.attempts,
        delivery.status,
        outcome.error,
    )
    if delivery.status == DeliveryStatus.PENDING:
        deliveries_queue([delivery.pk], countdown=delay)
    return delivery.status


def deliveries_due() -> list[int]:
    """Deliveries due for an attempt whose message may be lost (the broker is disposable),
    and those whose sender died mid-send (lease passed): queued again."""
    now = timezone.now()
    AlertDelivery.objects.filter(status=DeliveryStatus.SENDING, next_attempt_at__lt=now).update(
        status=DeliveryStatus.PENDING
    )
    due = list(
        AlertDelivery.objects.filter(
            status=DeliveryStatus.PENDING,
            next_attempt_at__lte=now - timedelta(seconds=settings.ALERT_EVALUATE_SECONDS),
        ).values_list("pk", flat=True)[:1000]
    )
    deliveries_queue(due)
    return due


# --- Evaluation -------------------------------------------------------------------------


def _alert_event(rule: AlertRule, incident: AlertIncident, type: EventType, now) -> None:
    subject = incident.subject
    what = "fired" if type == EventType.ALERT_FIRED else "resolved"
    event_record(
        type=type,
        message=f"alert {rule.name} {what}: {incident.summary}",
        team_id=rule.team_id,
        job_id=subject.get("job"),
        node_id=subject.get("node") if isinstance(subject.get("node"), int) else None,
        schedule_id=subject.get("schedule"),
        data={
            "rule": rule.pk,
            "rule_name": rule.name,
            "incident": incident.pk,
            "key": incident.dedupe_key,
        },
        at=now,
    )


def alert_rule_evaluate(*, rule_id: int, now: datetime | None = None) -> dict[str, int]:
    """Open an incident for each subject the rule's condition holds for and none is open
    (and notify), resolve those that cleared (and notify), and notify again those due a
    repeat. Nothing is sent while the rule is snoozed. The rule's row is locked, so two
    evaluations of one rule never overlap; a rule being evaluated is skipped."""
    now = now or timezone.now()
    counts = {"fired": 0, "resolved": 0, "repeated": 0}
    with transaction.atomic():
        rule = (
            AlertRule.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("team")
            .filter(pk=rule_id, enabled=True)
            .first()
        )
        if rule is None:
            return counts
        firing: dict[str, Firing] = condition_firings(rule, now)
        open_incidents = {i.dedupe_key: i for i in rule.incidents.filter(resolved_at__isnull=True)}
        snoozed = rule.snoozed_until is not None and rule.snoozed_until > now
        for key in firing.keys() - open_incidents.keys():
            incident = AlertIncident.objects.create(
                rule=rule,
                dedupe_key=key,
                summary=firing[key].summary,
                subject=firing[key].subject,
                opened_at=now,
            )
            _alert_event(rule, incident, EventType.ALERT_FIRED, now)
            counts["fired"] += 1
            if not snoozed:
                _notify(rule, DeliveryKind.FIRED, incident, now)
        for key in open_incidents.keys() - firing.keys():
            incident = open_incidents[key]
            incident.resolved_at = now
            incident.save(update_fields=["resolved_at"])
            _alert_event(rule, incident, EventType.ALERT_RESOLVED, now)
            counts["resolved"] += 1
            if not snoozed and incident.last_notified_at is not None:
                _notify(rule, DeliveryKind.RESOLVED, incident, now)
        if snoozed:
            return counts
        repeat = rule.repeat_interval_seconds
        for key in open_incidents.keys() & firing.keys():
            incident = open_incidents[key]
            if incident.last_notified_at is None:  # fired while snoozed
                _notify(rule, DeliveryKind.FIRED, incident, now)
            elif repeat and incident.last_notified_at <= now - timedelta(seconds=repeat):
                _notify(rule, DeliveryKind.REPEAT, incident, now)
                counts["repeated"] += 1
    return counts


def alerts_evaluate() -> dict[str, int]:
    totals = {"fired": 0, "resolved": 0, "repeated": 0}
    for rule_id in AlertRule.objects.filter(enabled=True).values_list("pk", flat=True):
        for name, count in alert_rule_evaluate(rule_id=rule_id).items():
            totals[name] += count
    return totals
