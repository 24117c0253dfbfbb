"""Retry policy: when a failed attempt runs again, and what a job becomes after each
attempt (succeeded, cancelled, pending for a retry, or failed: the dead-letter view)."""

import logging
import random
from datetime import timedelta

from django.conf import settings

from accounts.models import User
from events.models import EventType

from ..models import (
    TERMINAL_JOB_STATUSES,
    ExecutionStatus,
    Job,
    JobRetry,
    JobStatus,
    PendingReason,
)
from .dependencies import dependents_settle
from .timeline import job_ended_event, job_event

logger = logging.getLogger(__name__)

# No back-off grows beyond an hour.

RETRY_BACKOFF_CAP_SECONDS = 3600


def retry_delay_seconds(*, backoff_seconds: int, attempt: int) -> float:
    """Exponential back-off from `backoff_seconds`, doubled per attempt, capped, with jitter."""
    base = min(backoff_seconds * 2 ** (attempt - 1), RETRY_BACKOFF_CAP_SECONDS)
    return base * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not security


def job_plan_retry(
    *, job: Job, reason: str, delay_seconds: float, now, requested_by: User | None = None
) -> JobRetry:
    """Put the job back to pending for its next attempt, recording why and from when (a
    `job.requeued` event when a person asked for it, else `job.retry_planned`)."""
    due_at = now + timedelta(seconds=delay_seconds)
    job.status, job.pending_reason = JobStatus.PENDING, PendingReason.WAITING_RETRY
    job.not_before, job.finished_at = due_at, None
    retry = JobRetry.objects.create(
        job=job,
        attempt=job.attempts + 1,
        reason=reason[:500],
        due_at=due_at,
        requested_by=requested_by,
    )
    data = {"reason": retry.reason, "due_at": due_at.isoformat()}
    if requested_by is not None:
        job_event(
            job,
            EventType.JOB_REQUEUED,
            f"requeued by {requested_by.username} as attempt {retry.attempt}",
            attempt=retry.attempt,
            actor=requested_by.username,
            data=data,
            at=now,
        )
    else:
        job_event(
            job,
            EventType.JOB_RETRY_PLANNED,
            f"retry planned as attempt {retry.attempt} at {due_at.isoformat()}: {reason}",
            attempt=retry.attempt,
            data=data,
            at=now,
        )
    logger.info(
        "retry planned job=%s attempt=%s reason=%r due_at=%s",
        job.id,
        retry.attempt,
        reason,
        due_at.isoformat(),
    )
    return retry


def job_end(job: Job, status: str, now) -> None:
    job.status, job.pending_reason, job.finished_at = status, PendingReason.NONE, now


JOB_LIFECYCLE_FIELDS = ["status", "pending_reason", "not_before", "finished_at"]


def job_after_attempt(job: Job, *, status: str, error: str, now) -> None:
    """Move a locked job on once its current attempt ended with `status`: to `succeeded`,
    `cancelled`, back to `pending` for a retry, or to `failed` when out of retries."""
    if job.status not in (JobStatus.RESERVED, JobStatus.RUNNING):
        return
    if status == ExecutionStatus.FAILED:
        job_event(
            job,
            EventType.JOB_ATTEMPT_FAILED,
            f"attempt {job.attempts} failed: {error}",
            attempt=job.attempts,
            data={"error": error},
            at=now,
        )
    if status == ExecutionStatus.SUCCEEDED:
        job_end(job, JobStatus.SUCCEEDED, now)
    elif status == ExecutionStatus.CANCELLED:
        job_end(job, JobStatus.CANCELLED, now)
    elif job.attempts - job.preemptions <= job.max_retries:
        delay = retry_delay_seconds(backoff_seconds=job.retry_backoff_seconds, attempt=job.attempts)
        job_plan_retry(job=job, reason=error, delay_seconds=delay, now=now)
    else:
        job_end(job, JobStatus.FAILED, now)
    job.save(update_fields=JOB_LIFECYCLE_FIELDS)
    job_ended_event(job, reason=error, at=now)
    job_ended_settle(job, now=now)


def job_after_lost_attempt(job: Job, *, reason: str, attempts_lost: int, now) -> None:
    """Move a locked job on once its current attempt was lost with its node or process:
    retried at once (a lost attempt is the platform's failure, not the job's: it does not
    count against `max_retries`, NODE_LOST_MAX_RETRIES bounds it), or `cancelled` if a
    cancel was asked for."""
    if job.cancel_requested_at is not None:
        job_end(job, JobStatus.CANCELLED, now)
    elif attempts_lost <= settings.NODE_LOST_MAX_RETRIES:
        job_plan_retry(job=job, reason=reason, delay_seconds=0, now=now)
    else:
        job_end(job, JobStatus.FAILED, now)
    job.save(update_fields=JOB_LIFECYCLE_FIELDS)
    job_ended_event(job, reason=reason, at=now)
    job_ended_settle(job, now=now)


def job_ended_settle(job: Job, *, now) -> None:
    """Once a locked job's end is saved: settle what waits on it, in the same transaction."""
    if job.status in TERMINAL_JOB_STATUSES:
        dependents_settle(upstream_ids=[job.pk], now=now)


def job_after_preempted(job: Job, *, preempted_by: int | None, now) -> None:
    """Put a locked job whose attempt was preempted back to pending, at once, without
    using a retry (its `preemptions` count goes up instead), with a `job.preempted`
    event naming the job it made room for."""
    if job.status not in (JobStatus.RESERVED, JobStatus.RUNNING):
        return
    job.status, job.pending_reason = JobStatus.PENDING, PendingReason.NONE
    job.not_before, job.finished_at = None, None
    job.preemptions += 1
    job.save(update_fields=[*JOB_LIFECYCLE_FIELDS, "preemptions"])
    job_event(
        job,
        EventType.JOB_PREEMPTED,
        f"attempt {job.attempts} preempted by job {preempted_by}; it runs again, no retry used",
        attempt=job.attempts,
        data={"preempted_by": preempted_by},
        at=now,
    )
    logger.info(
        "attempt preempted job=%s attempt=%s preempted_by=%s", job.id, job.attempts, preempted_by
    )
