"""Accepting a job: checked against its spec's rules, idempotent per team and key."""

import logging
from contextlib import nullcontext
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Team, User
from common.db import prepared_cursor, row_insert, row_insert_statement, sql_literal
from common.wakeup import ARRIVAL, SCHEDULER_CHANNEL, scheduler_wake
from events.models import EventType
from resources.models import Queue

from ..models import Job, JobStatus, PendingReason
from .arrays import array_tasks_create
from .dependencies import job_dependencies_check, job_dependencies_lock, job_dependencies_record
from .specs import MAX_ENV, job_preemptible, job_spec_check
from .timeline import job_event, jobs_submitted_events

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submission:
    job: Job
    created: bool  # False when an earlier job with the same idempotency key was returned


def job_submit(*, team: Team, spec: dict, user: User | None = None) -> Submission:
    """Accept a job for `team`. `spec` holds validated JobSpec fields, with `queue` as a
    queue name (the default queue when absent), plus the job's own `idempotency_key` and
    `not_before`, and the `definition` it was made from, if any, and `array` ({count,
    parallelism}) for an array job; `depends_on` (upstream job ids and conditions) and
    `on_unsatisfied` make it wait for other jobs of the team; `hold` submits it held
    (`actions.job_release` lets it go). Resubmitting a known idempotency key returns the
    first job unchanged."""
    spec = dict(spec)
    depends_on = spec.pop("depends_on", None) or []
    array = spec.pop("array", None)
    hold = spec.pop("hold", False)
    key = spec.get("idempotency_key", "")
    if key:
        existing = Job.objects.filter(team=team, idempotency_key=key).first()
        if existing is not None:
            return Submission(job=existing, created=False)
    queue = job_spec_check(team=team, spec=spec)
    if array and spec.get("tasks", 1) > 1:
        raise ValidationError(
            {"tasks": ["An array job cannot be a gang; its tasks are jobs of their own."]}
        )
    if array and depends_on:
        raise ValidationError(
            {"depends_on": ["An array job cannot depend on other jobs; its tasks start at once."]}
        )
    if hold and depends_on:
        raise ValidationError(
            {"hold": ["A job with dependencies is held by them until they are met: hold it then."]}
        )
    if depends_on:
        job_dependencies_check(team=team, depends_on=depends_on)
        spec["pending_reason"] = PendingReason.WAITING_DEPENDENCIES
    if hold and not array:  # an array is held whole (`_array_create`)
        spec["pending_reason"] = PendingReason.HELD
    if array and len(spec.get("env", {})) >= MAX_ENV:  # each task gets JOB_ARRAY_INDEX too
        raise ValidationError({"env": [f"At most {MAX_ENV - 1} variables in an array job."]})
    # The job, its event and the scheduler's wake-up commit together: one statement of its
    # own (`_job_insert_submitted`), or, inside a caller's transaction, in a savepoint, so
    # a lost key race leaves that usable. With dependencies, the job, its dependencies and
    # its first settling are one transaction.
    by = f" by {user.username}" if user else ""
    held = ", held" if hold else ""
    message, actor = f"submitted{by} to queue {queue.name}{held}", user.username if user else ""
    fields = spec_in_queue(spec, queue)
    try:
        if array or depends_on:
            with transaction.atomic():
                if array:
                    job = _array_create(team=team, spec=fields, user=user, hold=hold, **array)
                else:
                    job_dependencies_lock(depends_on=depends_on)
                    job = row_insert(Job(team=team, submitted_by=user, **fields))
                    job_dependencies_record(job=job, depends_on=depends_on)
                job_event(job, EventType.JOB_SUBMITTED, message, actor=actor, at=job.created_at)
                scheduler_wake(ARRIVAL)  # delivered as this commits, not a commit of its own
        else:
            job = Job(team=team, submitted_by=user, **fields)
            in_transaction = transaction.get_connection().in_atomic_block
            with transaction.atomic() if in_transaction else nullcontext():
                _job_insert_submitted(job, message=message, actor=actor)
    except IntegrityError:
        # A concurrent submission with the same key won the race; return its job.
        existing = Job.objects.filter(team=team, idempotency_key=key).first() if key else None
        if existing is None:
            raise
        return Submission(job=existing, created=False)
    logger.info("job submitted job=%s team=%s name=%s", job.id, team.slug, job.name)
    return Submission(job=job, created=True)


# The wake-up's channel and payload are literals: psycopg caches the parsing of a
# statement of 50 parameters at most, and a job's insert has 43.
_WAKE_SQL = f"pg_notify({sql_literal(SCHEDULER_CHANNEL)}, {sql_literal(ARRIVAL)})"


def _job_insert_submitted(job: Job, *, message: str, actor: str) -> Job:
    """The job's insert, its submitted event and the scheduler's wake-up (a NOTIFY,
    delivered as the statement commits), in one statement: outside a transaction it
    commits on its own, one round trip where BEGIN, three statements and COMMIT took
    five."""
    insert = row_insert_statement(job)  # stamps job.created_at, the event's time
    sql = f"""
WITH job AS ({insert.sql}), event AS (
    INSERT INTO events_event (at, type, team_id, job_id, actor, message, data)
    SELECT %s, %s, %s, job.id, %s, %s, '{{}}'::jsonb FROM job
)
SELECT job.*, {_WAKE_SQL} FROM job"""  # noqa: S608 (the model's columns, the code's literals)
    event = [job.created_at, EventType.JOB_SUBMITTED, job.team_id, actor, message]
    with prepared_cursor() as cursor:
        cursor.execute(sql, [*insert.values, *event])
        return insert.read_back(cursor.fetchone())


def spec_in_queue(spec: dict, queue: Queue) -> dict:
    """The job's fields in its queue: a job that sets no time limit gets the queue's
    default, which the node enforces as its own and reservations count on; one that does
    not say whether it is preemptible gets the queue's default too."""
    timeout = spec.get("timeout_seconds")
    return {
        **spec,
        "queue": queue,
        "timeout_seconds": queue.default_timeout_seconds if timeout is None else timeout,
        "preemptible": job_preemptible(spec.get("preemptible"), queue),
    }


def _array_create(
    *, team: Team, spec: dict, user: User | None, count: int, parallelism: int, hold: bool
):
    """The array job (running from the start: its tasks run in its place) and its tasks;
    with `hold`, held whole from the start."""
    now = timezone.now()
    array = Job.objects.create(
        team=team,
        submitted_by=user,
        status=JobStatus.RUNNING,
        started_at=now,
        array_count=count,
        array_parallelism=parallelism,
        held_at=now if hold else None,
        **spec,
    )
    array_tasks_create(array=array, count=count, parallelism=parallelism)
    return array


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
        Job(team=team, submitted_by=user, **{**spec_in_queue(spec, queue), "idempotency_key": key})
        for key in new_keys
    )
    jobs_submitted_events(created, lambda job: f"submitted to queue {queue.name}")
    scheduler_wake(ARRIVAL)
    for job in created:
        logger.info("job submitted job=%s team=%s name=%s", job.id, team.slug, job.name)
        jobs[job.idempotency_key] = job
    return jobs
