"""Events: one row for every state change a person would ask about, of a job, a node, a
schedule or an alert.

The subjects are plain ids, not foreign keys, so an event outlives its job, node, schedule
or team (they may be purged or deleted); the retention setting alone removes events. An
event with a team belongs to that team; one without (a node's own) is for staff.
"""

from django.db import models
from django.db.models import F, Q


class EventType(models.TextChoices):
    JOB_SUBMITTED = "job.submitted", "Job submitted"
    JOB_PLACED = "job.placed", "Job placed on a node"
    JOB_RESERVED = "job.reserved", "Room reserved for the job on a node"
    JOB_STARTED = "job.started", "Job started"
    JOB_SUCCEEDED = "job.succeeded", "Job succeeded"
    JOB_ATTEMPT_FAILED = "job.attempt_failed", "Attempt failed"
    JOB_RETRY_PLANNED = "job.retry_planned", "Retry planned"
    JOB_NODE_LOST = "job.node_lost", "Attempt lost with its node or process"
    JOB_GANG_STOPPING = "job.gang_stopping", "A gang's task ended badly: its others are stopped"
    JOB_PREEMPTED = "job.preempted", "Attempt preempted by a higher-priority job"
    JOB_CANCEL_REQUESTED = "job.cancel_requested", "Cancel of a running job requested"
    JOB_CANCELLED = "job.cancelled", "Job cancelled"
    JOB_DEAD_LETTERED = "job.dead_lettered", "Job failed for good (dead letter)"
    JOB_REQUEUED = "job.requeued", "Job requeued"
    JOB_ACKNOWLEDGED = "job.acknowledged", "Dead letter acknowledged"
    JOB_HELD = "job.held", "Job held"
    JOB_RELEASED = "job.released", "Held job released"
    JOB_CHANGED = "job.changed", "Pending job changed"
    NODE_REGISTERED = "node.registered", "Node registered"
    NODE_BACK = "node.back", "Node back after being offline"
    NODE_OFFLINE = "node.offline", "Node offline"
    NODE_BROKER_UNREACHABLE = "node.broker_unreachable", "Node reaches the API but not the broker"
    NODE_CORDONED = "node.cordoned", "Node cordoned"
    NODE_DRAINING = "node.draining", "Node draining"
    NODE_DRAINED = "node.drained", "Node drained"
    NODE_UNCORDONED = "node.uncordoned", "Node uncordoned"
    SCHEDULE_FIRED = "schedule.fired", "Schedule fired"
    SCHEDULE_SKIPPED = "schedule.skipped", "Schedule skipped a due time (forbid)"
    SCHEDULE_CAUGHT_UP = "schedule.caught_up", "Schedule caught up missed due times"
    SCHEDULE_MISSED = "schedule.missed", "Schedule missed a due time"
    SCHEDULE_SUBMIT_FAILED = "schedule.submit_failed", "Schedule could not submit its job"
    ALERT_FIRED = "alert.fired", "Alert fired"
    ALERT_RESOLVED = "alert.resolved", "Alert resolved"


def _newest_first(name: str, *fields: str, condition: Q | None = None) -> models.Index:
    return models.Index(
        *(F(f) for f in fields), F("at").desc(), F("id").desc(), name=name, condition=condition
    )


class Event(models.Model):
    at = models.DateTimeField()
    type = models.CharField(max_length=32, choices=EventType.choices)
    team_id = models.BigIntegerField(null=True, blank=True)
    job_id = models.BigIntegerField(null=True, blank=True)
    node_id = models.BigIntegerField(null=True, blank=True)
    schedule_id = models.BigIntegerField(null=True, blank=True)
    attempt = models.PositiveIntegerField(null=True, blank=True)
    # Who acted, when a person did (a username); empty for the platform's own changes.
    actor = models.CharField(max_length=150, blank=True)
    message = models.TextField()
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(type__in=EventType.values), name="event_type_valid"),
        ]
        # Used by GET /api/events/ (newest first, by cursor) and its filters, and by the
        # retention purge (the oldest first, on `event_at`). The subjects' indexes are
        # partial: most events have no schedule, and node-only events no job.
        indexes = [
            _newest_first("event_at"),
            _newest_first("event_team_at", "team_id"),
            _newest_first("event_type_at", "type"),
            _newest_first("event_job_at", "job_id", condition=Q(job_id__isnull=False)),
            _newest_first("event_node_at", "node_id", condition=Q(node_id__isnull=False)),
            _newest_first(
                "event_schedule_at", "schedule_id", condition=Q(schedule_id__isnull=False)
            ),
        ]

    def __str__(self):
        return f"{self.at.isoformat()} {self.type}: {self.message}"
