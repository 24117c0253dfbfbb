"""Accepting a job: checked against its spec's rules, idempotent per team and key."""

import contextlib
import logging
from dataclasses import dataclass

from django.db import IntegrityError, transaction

from accounts.models import Team, User
from common.wakeup import ARRIVAL, scheduler_wake

from ..models import Job
from .specs import job_spec_check

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
    # On its own the INSERT commits by itself, and the wake-up follows it; inside a
    # caller's transaction it is a savepoint, so a lost key race leaves that usable.
    in_transaction = transaction.get_connection().in_atomic_block
    try:
        with transaction.atomic() if in_transaction else contextlib.nullcontext():
            job = Job.objects.create(team=team, submitted_by=user, **{**spec, "queue": queue})
    except IntegrityError:
        # A concurrent submission with the same key won the race; return its job.
        existing = Job.objects.filter(team=team, idempotency_key=key).first() if key else None
        if existing is None:
            raise
        return Submission(job=existing, created=False)
    scheduler_wake(ARRIVAL)
    logger.info("job submitted job=%s team=%s name=%s", job.id, team.slug, job.name)
    return Submission(job=job, created=True)


def jobs_submit_many(
    *, team: Team, spec: dict, idempotency_keys: list[str], user: User | None = None
) -> dict[str, Job]:
    """Jobs of one spec told apart by their idempotency keys (one per due time of a
    schedule), checked once and inserted in one statement: what job_submit does for
    each key, inside the caller's transaction. Returns each key's job; a key already
    used keeps its first job. The caller holds what makes the keys its own (a
    schedule's row lock), so no other submission races for them."""
    jobs = {
        job.idempotency_key: job
        for job in Job.objects.filter(team=team, idempotency_key__in=idempotency_keys)
    }
    new_keys = [key for key in idempotency_keys if key not in jobs]
    if not new_keys:
        return jobs
    queue = job_spec_check(team=team, spec=spec)
    created = Job.objects.bulk_create(
        Job(team=team, submitted_by=user, **{**spec, "queue": queue, "idempotency_key": key})
        for key in new_keys
    )
    scheduler_wake(ARRIVAL)
    for job in created:
        logger.info("job submitted job=%s team=%s name=%s", job.id, team.slug, job.name)
        jobs[job.idempotency_key] = job
    return jobs
