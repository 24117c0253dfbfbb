"""Accepting a job: checked against its spec's rules, idempotent per team and key."""

import logging
from dataclasses import dataclass

from django.db import IntegrityError, transaction

from accounts.models import Team, User
from common.wakeup import ARRIVAL, scheduler_wake
from events.models import EventType

from ..models import Job
from .specs import job_spec_check
from .timeline import job_event

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submission:
    job: Job
    created: bool  # False when an earlier job with the same idempotency key was returned


def job_submit(*, team: Team, spec: dict, user: User | None = None) -> Submission:
    """Accept a job for `team`. `spec` holds validated JobSpec fields, with `queue` as a
    queue name (the default queue when absent), plus the job's own `idempotency_key` and
    `not_before`, and the `definition` it was made from, if any. Resubmitting a known
    idempotency key returns the first job unchanged."""
    key = spec.get("idempotency_key", "")
    if key:
        existing = Job.objects.filter(team=team, idempotency_key=key).first()
        if existing is not None:
            return Submission(job=existing, created=False)
    queue = job_spec_check(team=team, spec=spec)
    # The job and its event commit together, and the wake-up follows; inside a caller's
    # transaction it is a savepoint, so a lost key race leaves that usable.
    try:
        with transaction.atomic():
            job = Job.objects.create(team=team, submitted_by=user, **{**spec, "queue": queue})
            by = f" by {user.username}" if user else ""
            job_event(
                job,
                EventType.JOB_SUBMITTED,
                f"submitted{by} to queue {queue.name}",
                actor=user.username if user else "",
                at=job.created_at,
            )
    except IntegrityError:
        # A concurrent submission with the same key won the race; return its job.
        existing = Job.objects.filter(team=team, idempotency_key=key).first() if key else None
        if existing is None:
            raise
        return Submission(job=existing, created=False)
    scheduler_wake(ARRIVAL)
    logger.info("job submitted job=%s team=%s name=%s", job.id, team.slug, job.name)
    return Submission(job=job, created=True)
