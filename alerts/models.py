"""Alert rules, where they notify (channels), the incidents they open and resolve, and
every delivery of a notification with its attempts."""

from django.conf import settings
from django.db import models
from django.db.models import Q


class Condition(models.TextChoices):
    JOB_DEAD_LETTERED = "job_dead_lettered", "A job failed for good (dead-lettered)"
    JOB_RETRYING = "job_retrying", "A job is waiting to retry"
    JOB_RUNNING_LONGER = "job_running_longer", "A job runs longer than threshold seconds"
    SCHEDULE_MISSED = (
        "schedule_missed",
        ("A schedule missed or skipped a due time, or fired later than threshold seconds"),
    )
    QUEUE_BACKLOG_AGE = (
        "queue_backlog_age",
        ("A queue's oldest due pending job waits longer than threshold seconds"),
    )
    FAILURE_RATIO = (
        "failure_ratio",
        ("Failed and lost attempts over ended ones, in the window, exceed threshold (0 to 1)"),
    )
    NODE_OFFLINE = "node_offline", "A node went offline (staff rules)"
    JOB_DEADLINE_PASSED = (
        "job_deadline_passed",
        "A job was cancelled, or stopped, because its deadline passed",
    )


# Conditions whose threshold is a number of seconds or a ratio, and must be given.
THRESHOLD_CONDITIONS = (
    Condition.JOB_RUNNING_LONGER,
    Condition.QUEUE_BACKLOG_AGE,
    Condition.FAILURE_RATIO,
)


class AlertRule(models.Model):
    # Empty only for staff rules about the cluster (node_offline).
    team = models.ForeignKey(
        "accounts.Team", null=True, blank=True, on_delete=models.CASCADE, related_name="alerts"
    )
    name = models.CharField(max_length=200)
    condition = models.CharField(max_length=32, choices=Condition.choices)
    threshold = models.FloatField(
        null=True, blank=True, help_text="Seconds, or a ratio for failure_ratio, e.g. 0.5"
    )
    window_seconds = models.PositiveIntegerField(
        default=3600, help_text="The failure ratio's window."
    )
    # Filters: which jobs, schedules, queues or nodes the rule watches.
    queue = models.CharField(max_length=100, blank=True, help_text="A queue's name.")
    definition_id = models.BigIntegerField(null=True, blank=True)
    schedule_id = models.BigIntegerField(null=True, blank=True)
    name_pattern = models.CharField(
        max_length=200,
        blank=True,
        help_text="A glob on the job's, schedule's or node's name, e.g. \"nightly-*\"",
    )
    repeat_interval_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Notify again while the incident lasts; empty: once."
    )
    snoozed_until = models.DateTimeField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(condition__in=Condition.values), name="alert_condition_valid"
            ),
            models.CheckConstraint(
                condition=~Q(condition__in=THRESHOLD_CONDITIONS) | Q(threshold__isnull=False),
                name="alert_threshold_when_needed",
            ),
            models.CheckConstraint(
                condition=Q(threshold__isnull=True) | Q(threshold__gte=0),
                name="alert_threshold_not_negative",
            ),
            # A rule without a team is a staff rule about nodes; node rules are staff's.
            models.CheckConstraint(
                condition=Q(team__isnull=True, condition=Condition.NODE_OFFLINE)
                | (Q(team__isnull=False) & ~Q(condition=Condition.NODE_OFFLINE)),
                name="alert_team_unless_node_rule",
            ),
            models.UniqueConstraint(fields=["team", "name"], name="alert_team_name_unique"),
        ]
        indexes = [
            # Used by the evaluation on beat: every enabled rule.
            models.Index(fields=["condition"], name="alert_enabled", condition=Q(enabled=True)),
        ]

    def __str__(self):
        return f"{self.team or 'staff'}/{self.name}"


class ChannelKind(models.TextChoices):
    WEBHOOK = "webhook", "Webhook (JSON, signed)"
    SLACK = "slack", "Slack-compatible incoming webhook"
    EMAIL = "email", "E-mail"


class AlertChannel(models.Model):
    """Where a rule's notifications go. A webhook's secret signs its requests; it is shown
    once, when the channel is made, and never again."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="channels")
    kind = models.CharField(max_length=16, choices=ChannelKind.choices)
    target = models.CharField(max_length=500, help_text="The URL, or the e-mail address.")
    secret = models.CharField(max_length=64, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["rule", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=ChannelKind.values), name="alert_channel_kind_valid"
            ),
            models.UniqueConstraint(
                fields=["rule", "kind", "target"], name="alert_channel_once_per_rule"
            ),
        ]

    def __str__(self):
        return f"{self.kind} {self.target}"


class AlertIncident(models.Model):
    """One time a rule's condition held for one subject (its dedupe key: `job:7`,
    `node:3`, `queue:default`, `schedule:2`, `ratio`), from when it fired to when it
    cleared. At most one is open per rule and key: one notification per incident."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="incidents")
    dedupe_key = models.CharField(max_length=100)
    summary = models.TextField()
    subject = models.JSONField(default=dict, blank=True)
    opened_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    last_notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-opened_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "dedupe_key"],
                condition=Q(resolved_at__isnull=True),
                name="alert_incident_open_once_per_key",
            ),
        ]

    def __str__(self):
        return f"{self.rule} {self.dedupe_key}"


class DeliveryKind(models.TextChoices):
    FIRED = "fired", "Fired"
    REPEAT = "repeat", "Still firing (repeat)"
    RESOLVED = "resolved", "Resolved"
    TEST = "test", "Test"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed (out of attempts)"


class AlertDelivery(models.Model):
    """One notification to one channel, with its attempts."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.ForeignKey(AlertChannel, on_delete=models.CASCADE, related_name="deliveries")
    incident = models.ForeignKey(
        AlertIncident, null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries"
    )
    kind = models.CharField(max_length=16, choices=DeliveryKind.choices)
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    payload = models.JSONField()
    attempts = models.PositiveIntegerField(default=0)
    # What each attempt got: [{"at", "status_code", "error"}], oldest first.
    attempt_log = models.JSONField(default=list, blank=True)
    next_attempt_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=DeliveryKind.values), name="alert_delivery_kind_valid"
            ),
            models.CheckConstraint(
                condition=Q(status__in=DeliveryStatus.values), name="alert_delivery_status_valid"
            ),
        ]
        indexes = [
            # Used by GET /api/alerts/{id}/deliveries/.
            models.Index(fields=["rule", "-created_at", "-id"], name="alert_delivery_rule"),
            # Used by the sweep on beat: deliveries due for an attempt.
            models.Index(
                fields=["next_attempt_at"],
                name="alert_delivery_due",
                condition=Q(status__in=[DeliveryStatus.PENDING, DeliveryStatus.SENDING]),
            ),
        ]

    def __str__(self):
        return f"{self.kind} to {self.channel} ({self.status})"
