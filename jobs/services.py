"""Writes for jobs: submission, and the lifecycle of executions on nodes.

Lock order in these services: job, then execution, then allocation, then node. The
scheduling cycle locks nodes first but takes jobs with SKIP LOCKED, so it never waits
for a job lock. A node's finish that hands its room on (`jobs.reporting`) takes more
jobs after its node, with SKIP LOCKED too, and its advisory lock only if free, so it
never waits either. Every status change is a conditional UPDATE on the expected status, so
a lost race (a duplicate message, a second worker) is detected and changes nothing.
"""

import contextlib
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from celery.utils import uuid
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Q, RestrictedError
from django.utils import timezone

from accounts.models import Team, User
from nodes.models import NodeStatus
from nodes.selectors import node_capacity_maxima
from resources.models import DEFAULT_QUEUE_NAME, Queue
from resources.selectors import queue_for_submission
from resources.services import (
    ARRIVAL,
    SCHEDULER_CHANNEL,
    allocation_release,
    scheduler_wake,
)
from scheduler_site.celery import app as celery_app
from scheduler_site.db import prepared_cursor

from .models import (
    TERMINAL_JOB_STATUSES,
    ExecutionStatus,
    Job,
    JobDefinition,
    JobExecution,
    JobKind,
    JobRetry,
    JobStatus,
    PendingReason,
)

logger = logging.getLogger(__name__)

EXECUTION_TASK = "jobs.run_execution"
RETRY_BACKOFF_CAP_SECONDS = 3600

# Caps on a spec's free-form parts, for inline jobs, definitions and the jobs made from
# them alike: each ends up in the database row and in every execution's environment.
MAX_ENV = 128
MAX_ENV_NAME_LENGTH = 256
MAX_PARAMETERS_BYTES = 64 * 1024
MAX_SELECTOR = 32

# The JobSpec fields a definition hands on to each job made from it (the queue aside,
# which a submission names).
DEFINITION_SPEC_FIELDS = (
    "name",
    "kind",
    "command",
    "callable",
    "env",
    "parameters",
    "cpu_millis",
    "memory_mb",
    "gpu",
    "priority",
    "max_retries",
    "retry_backoff_seconds",
    "timeout_seconds",
    "node_selector",
)
DEFINITION_NAME_TAKEN = {"name": ["The team already has a definition with this name."]}
# What a submission from a definition may change; env and parameters merge over the
# definition's.
DEFINITION_OVERRIDE_FIELDS = (
    "name",
    "parameters",
    "env",
    "priority",
    "idempotency_key",
    "not_before",
)


@dataclass(frozen=True)
class Submission:
    job: Job
    created: bool  # False when an earlier job with the same idempotency key was returned


def _format_cpu(cpu_millis: int) -> str:
    cores = cpu_millis / 1000
    return f"{cores:g} CPU"


def job_request_fits_nowhere(*, cpu_millis: int, memory_mb: int, gpu: int) -> ValidationError:
    """Why no registered node could hold a request even when empty (the caller found none)."""
    largest = node_capacity_maxima()
    if largest["cpu_millis"] is None:
        return ValidationError(
            {"resources": ["No node is registered, so no node can run this job."]}
        )
    messages = []
    if cpu_millis > largest["cpu_millis"]:
        messages.append(
            f"Requests {_format_cpu(cpu_millis)}, but the largest node has "
            f"{_format_cpu(largest['cpu_millis'])}."
        )
    if memory_mb > largest["memory_mb"]:
        messages.append(
            f"Requests {memory_mb} MB of memory, but the largest node has "
            f"{largest['memory_mb']} MB."
        )
    if gpu > largest["gpu"]:
        messages.append(f"Requests {gpu} GPU, but the most any node has is {largest['gpu']}.")
    if not messages:
        messages.append(
            f"No registered node has {_format_cpu(cpu_millis)}, {memory_mb} MB of memory and "
            f"{gpu} GPU at once."
        )
    return ValidationError({"resources": messages})


def job_callable_check_allowed(name: str) -> None:
    if name not in settings.JOB_CALLABLES:
        allowed = ", ".join(settings.JOB_CALLABLES) or "none"
        raise ValidationError(
            {"callable": [f"{name!r} is not an allowed callable (allowed: {allowed})."]}
        )


def job_queue_for_team(*, team: Team, name: str, request: dict) -> Queue:
    """The queue `name`, if `team` may submit into it; the same answer for a queue that
    does not exist and one the team may not use, so names of others' queues do not leak.
    A request (resource name to amount) that no registered node could ever hold is
    refused too, from the same read."""
    queue, fits = queue_for_submission(team=team, name=name, **request)
    if queue is None:
        raise ValidationError(
            {"queue": [f"No queue named {name!r} that team {team.slug} may submit to."]}
        )
    if not fits:
        raise job_request_fits_nowhere(**request)
    return queue


def job_request_check_quota(*, queue: Queue, cpu_millis: int, memory_mb: int, gpu: int) -> None:
    """Reject a request larger than its queue's whole quota: it could never start."""
    messages = []
    if queue.quota_cpu_millis is not None and cpu_millis > queue.quota_cpu_millis:
        messages.append(
            f"Requests {_format_cpu(cpu_millis)}, but queue {queue.name} allows at most "
            f"{_format_cpu(queue.quota_cpu_millis)} at once."
        )
    if queue.quota_memory_mb is not None and memory_mb > queue.quota_memory_mb:
        messages.append(
            f"Requests {memory_mb} MB of memory, but queue {queue.name} allows at most "
            f"{queue.quota_memory_mb} MB at once."
        )
    if queue.quota_gpu is not None and gpu > queue.quota_gpu:
        messages.append(
            f"Requests {gpu} GPU, but queue {queue.name} allows at most {queue.quota_gpu} at once."
        )
    if messages:
        raise ValidationError({"resources": messages})


def job_spec_limit_errors(
    *, env: dict | None = None, parameters: dict | None = None, node_selector: dict | None = None
) -> dict[str, list[str]]:
    """What is wrong with a spec's env, parameters and node selector, by field; empty
    when nothing is. Serializers ask it field by field, services for the whole spec."""
    errors: dict[str, list[str]] = {}
    if env is not None:
        if len(env) > MAX_ENV:
            errors["env"] = [f"At most {MAX_ENV} variables."]
        else:
            for key in env:
                if not key or "=" in key or "\x00" in key or len(key) > MAX_ENV_NAME_LENGTH:
                    errors["env"] = [f"Invalid variable name: {key[:64]!r}."]
                    break
    if parameters is not None:
        if len(json.dumps(parameters)) > MAX_PARAMETERS_BYTES:
            errors["parameters"] = [f"At most {MAX_PARAMETERS_BYTES} bytes as JSON."]
        elif _contains_nul(parameters):
            errors["parameters"] = [NO_NUL]
    if node_selector is not None:
        if len(node_selector) > MAX_SELECTOR:
            errors["node_selector"] = [f"At most {MAX_SELECTOR} labels."]
        elif _contains_nul(node_selector):
            errors["node_selector"] = [NO_NUL]
    return errors


# PostgreSQL's text and jsonb cannot hold NUL; DRF's CharField refuses it, JSON keys need this.
NO_NUL = "Null characters are not allowed."


def _contains_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(v) for v in value)
    return False


def job_spec_check(*, team: Team, spec: dict) -> Queue:
    """Refuse a spec that could never run for `team`: over the caps, a callable not on
    the allow-list, a queue the team may not use, a request larger than the largest node
    or the queue's whole quota. Returns the queue `spec` names (the default when absent).
    The one check for inline jobs, definitions, and jobs made from definitions."""
    errors = job_spec_limit_errors(
        env=spec.get("env"),
        parameters=spec.get("parameters"),
        node_selector=spec.get("node_selector"),
    )
    if errors:
        raise ValidationError(errors)
    if spec.get("kind") == JobKind.CALLABLE:
        job_callable_check_allowed(spec.get("callable", ""))
    request = {"cpu_millis": spec["cpu_millis"], "memory_mb": spec["memory_mb"], "gpu": spec["gpu"]}
    queue = job_queue_for_team(
        team=team, name=spec.get("queue", DEFAULT_QUEUE_NAME), request=request
    )
    job_request_check_quota(queue=queue, **request)
    return queue


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


def definition_job_spec(*, definition: JobDefinition) -> dict:
    """The spec of a job made from `definition`, as `job_submit` takes it."""
    spec = {name: getattr(definition, name) for name in DEFINITION_SPEC_FIELDS}
    spec.update(queue=definition.queue.name, definition=definition)
    return spec


def _definition_name_taken(*, team: Team, name: str, exclude_pk: int | None = None) -> bool:
    taken = JobDefinition.objects.filter(team=team, name=name)
    if exclude_pk is not None:
        taken = taken.exclude(pk=exclude_pk)
    return taken.exists()


def _definition_save(definition: JobDefinition) -> None:
    """Save, answering a name taken meanwhile (a racing create) as the same 400."""
    try:
        with transaction.atomic():
            definition.save()
    except IntegrityError:
        if _definition_name_taken(
            team=definition.team, name=definition.name, exclude_pk=definition.pk
        ):
            raise ValidationError(DEFINITION_NAME_TAKEN) from None
        raise


def definition_create(*, team: Team, spec: dict) -> JobDefinition:
    """A new definition for `team`. `spec` holds validated JobSpec fields, with `queue` as
    a queue name (the default queue when absent); it must be able to run as a job."""
    queue = job_spec_check(team=team, spec=spec)
    if _definition_name_taken(team=team, name=spec["name"]):
        raise ValidationError(DEFINITION_NAME_TAKEN)
    definition = JobDefinition(team=team, **{**spec, "queue": queue})
    _definition_save(definition)
    logger.info("definition created definition=%s team=%s", definition.pk, team.slug)
    return definition


def definition_update(*, definition: JobDefinition, fields: dict) -> JobDefinition:
    """Change some of a definition's spec fields (`queue` as a name). The whole spec is
    checked again, as a submission from it would be. Jobs already made from it keep
    their own copy of the spec."""
    with transaction.atomic():
        definition = (
            JobDefinition.objects.select_for_update(of=("self",))
            .select_related("team", "queue")
            .get(pk=definition.pk)
        )
        spec = {**definition_job_spec(definition=definition), **fields}
        spec.pop("definition")
        queue = job_spec_check(team=definition.team, spec=spec)
        if _definition_name_taken(
            team=definition.team, name=spec["name"], exclude_pk=definition.pk
        ):
            raise ValidationError(DEFINITION_NAME_TAKEN)
        for name in DEFINITION_SPEC_FIELDS:
            setattr(definition, name, spec[name])
        definition.queue = queue
        _definition_save(definition)
    logger.info("definition updated definition=%s team=%s", definition.pk, definition.team.slug)
    return definition


def _schedules_in_the_way(definition: JobDefinition) -> ValidationError:
    names = list(definition.schedules.order_by("name").values_list("name", flat=True)[:10])
    return ValidationError(
        {
            "schedules": [
                "Schedules still use this definition ("
                + ", ".join(names)
                + "); delete them or point them at another definition first."
            ]
        }
    )


def definition_delete(*, definition: JobDefinition) -> None:
    """Delete a definition no schedule uses. Jobs made from it stay, without it.

    The row lock makes a concurrent schedule of this definition wait (its foreign key
    needs a share lock on the row) and then fail, rather than slip in between the check
    and the delete."""
    with transaction.atomic():
        definition = (
            JobDefinition.objects.select_for_update(of=("self",))
            .select_related("team")
            .get(pk=definition.pk)
        )
        pk = definition.pk
        if definition.schedules.exists():
            raise _schedules_in_the_way(definition)
        try:
            with transaction.atomic():
                definition.delete()
        except RestrictedError:
            raise _schedules_in_the_way(definition) from None
    logger.info("definition deleted definition=%s team=%s", pk, definition.team.slug)


def definition_submit(
    *, definition: JobDefinition, overrides: dict, user: User | None = None
) -> Submission:
    """Submit a job made from `definition`. `overrides` may hold DEFINITION_OVERRIDE_FIELDS:
    `env` and `parameters` are merged over the definition's, the others replace its
    values. The merged spec is checked like any other submission."""
    unknown = set(overrides) - set(DEFINITION_OVERRIDE_FIELDS)
    if unknown:
        raise ValidationError({name: ["Comes from the definition."] for name in sorted(unknown)})
    spec = definition_job_spec(definition=definition)
    for name, value in overrides.items():
        spec[name] = {**spec[name], **value} if name in ("env", "parameters") else value
    return job_submit(team=definition.team, spec=spec, user=user)


def execution_publish_many(*, tokens: Sequence[str]) -> None:
    """Send many executions' messages over one producer connection, pipelined.

    The same messages `send_task` would send, routed by the same router, built and sent
    with the two calls `send_task` itself makes: its per-call option handling costs as
    much as the publishing when a cycle sends thousands. The queue is not re-declared per
    message: a node's queue is declared by its own worker, and a message for it is
    addressed to it by name. A failure here loses nothing: whatever was not sent stays
    `reserved` in PostgreSQL, and reconciliation sends it again.
    """
    if not tokens:
        return
    amqp = celery_app.amqp
    send_sent_event = celery_app.conf.task_send_sent_event
    try:
        with celery_app.producer_or_acquire() as producer, producer.batch():
            for token in tokens:
                kwargs = {"token": token}
                route = amqp.router.route({}, EXECUTION_TASK, (), kwargs)
                message = amqp.create_task_message(
                    uuid(), EXECUTION_TASK, (), kwargs, create_sent_event=send_sent_event
                )
                amqp.send_task_message(producer, EXECUTION_TASK, message, declare=[], **route)
    except Exception:
        logger.exception("could not publish %s executions", len(tokens))


# What the node needs of a job to run it, read by the claim (in its SELECT's order).
JOB_RUN_FIELDS = (
    "kind",
    "command",
    "callable",
    "env",
    "parameters",
    "cpu_millis",
    "memory_mb",
    "gpu",
    "timeout_seconds",
)
_JSON_RUN_FIELDS = {"command", "env", "parameters"}

# One statement, so the claim is one round trip and one commit, and it hands back what
# the node needs to run the job. The execution's UPDATE filters on columns of the
# claimed row only: PostgreSQL re-checks those after waiting for a racing claim, so
# exactly one claim wins.
_CLAIM_SQL = """
WITH execution AS (
    UPDATE jobs_jobexecution SET status = 'running', started_at = %(now)s
     WHERE token = %(token)s AND status = 'reserved' AND node_id = %(node_id)s
 RETURNING id, job_id, attempt, token, node_id
), allocation AS (
    UPDATE resources_allocation a SET status = 'active', activated_at = %(now)s
      FROM execution WHERE a.execution_id = execution.id AND a.status = 'reserved'
), job AS (
    UPDATE jobs_job j SET status = 'running', started_at = %(now)s
      FROM execution WHERE j.id = execution.job_id AND j.status = 'reserved'
)
SELECT execution.id, execution.job_id, execution.attempt, execution.token, execution.node_id,
       j.kind, j.command, j.callable, j.env, j.parameters, j.cpu_millis, j.memory_mb, j.gpu,
       j.timeout_seconds
  FROM execution JOIN jobs_job j ON j.id = execution.job_id
"""


def claimed_execution(row: Sequence, *, now) -> JobExecution:
    """A claimed execution from a row of (execution id, job id, attempt, token, node id,
    then JOB_RUN_FIELDS), with its job's JOB_RUN_FIELDS (and only those) loaded."""
    execution_id, job_id, attempt, token, node_id, *values = row
    fields = dict(zip(JOB_RUN_FIELDS, values, strict=True))
    for name in _JSON_RUN_FIELDS:  # Django has psycopg hand jsonb over as text
        if isinstance(fields[name], str):
            fields[name] = json.loads(fields[name])
    job = Job(id=job_id, status=JobStatus.RUNNING, started_at=now, **fields)
    return JobExecution(
        id=execution_id,
        job=job,
        attempt=attempt,
        node_id=node_id,
        token=token,
        status=ExecutionStatus.RUNNING,
        started_at=now,
    )


def execution_claim(*, token: str, node_id: int) -> JobExecution | None:
    """Claim a reserved execution for the node about to run it (see `claimed_execution`).

    Returns None, and changes nothing, if the token is unknown, not meant for this node,
    or already claimed or finished: that message was a duplicate or stale.
    """
    now = timezone.now()
    with prepared_cursor() as cursor:
        cursor.execute(_CLAIM_SQL, {"token": token, "node_id": node_id, "now": now})
        row = cursor.fetchone()
    if row is None:
        return None
    execution = claimed_execution(row, now=now)
    logger.info(
        "execution claimed job=%s attempt=%s node=%s token=%s",
        execution.job_id,
        execution.attempt,
        node_id,
        token,
    )
    return execution


def retry_delay_seconds(*, backoff_seconds: int, attempt: int) -> float:
    """Exponential back-off from `backoff_seconds`, doubled per attempt, capped, with jitter."""
    base = min(backoff_seconds * 2 ** (attempt - 1), RETRY_BACKOFF_CAP_SECONDS)
    return base * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not security


def _plan_retry(
    *, job: Job, reason: str, delay_seconds: float, now, requested_by: User | None = None
) -> JobRetry:
    """Put the job back to pending for its next attempt, recording why and from when."""
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
    logger.info(
        "retry planned job=%s attempt=%s reason=%r due_at=%s",
        job.id,
        retry.attempt,
        reason,
        due_at.isoformat(),
    )
    return retry


def _end_job(job: Job, status: str, now) -> None:
    job.status, job.pending_reason, job.finished_at = status, PendingReason.NONE, now


JOB_LIFECYCLE_FIELDS = ["status", "pending_reason", "not_before", "finished_at"]


def _job_after_attempt(job: Job, *, status: str, error: str, now) -> None:
    """Move a locked job on once its current attempt ended with `status`: to `succeeded`,
    `cancelled`, back to `pending` for a retry, or to `failed` when out of retries."""
    if job.status not in (JobStatus.RESERVED, JobStatus.RUNNING):
        return
    if status == ExecutionStatus.SUCCEEDED:
        _end_job(job, JobStatus.SUCCEEDED, now)
    elif status == ExecutionStatus.CANCELLED:
        _end_job(job, JobStatus.CANCELLED, now)
    elif job.attempts <= job.max_retries:
        delay = retry_delay_seconds(backoff_seconds=job.retry_backoff_seconds, attempt=job.attempts)
        _plan_retry(job=job, reason=error, delay_seconds=delay, now=now)
    else:
        _end_job(job, JobStatus.FAILED, now)
    job.save(update_fields=JOB_LIFECYCLE_FIELDS)


def execution_finish(
    *,
    token: str,
    exit_code: int | None,
    error: str = "",
    log_path: str = "",
    log_tail: str = "",
    cancelled: bool = False,
) -> bool:
    """Record how a running execution ended, release its allocation, and move the job on:
    to `succeeded`, `cancelled`, back to `pending` for a retry, or to `failed` (the
    dead-letter view) when out of retries. False when it was not running (a late or
    duplicate report), which changes nothing."""
    if exit_code == 0 and not error and not cancelled:
        success = Success(token=token, log_path=log_path, log_tail=log_tail)
        if executions_finish_succeeded([success]):
            return True
    now = timezone.now()
    with transaction.atomic():
        found = JobExecution.objects.filter(token=token).values_list("id", "job_id").first()
        if found is None:
            return False
        execution_id, job_id = found
        job = Job.objects.select_for_update().get(pk=job_id)
        cancelled = cancelled or job.cancel_requested_at is not None
        if cancelled:
            status = ExecutionStatus.CANCELLED
        elif exit_code == 0 and not error:
            status = ExecutionStatus.SUCCEEDED
        else:
            status = ExecutionStatus.FAILED
        finished = JobExecution.objects.filter(
            pk=execution_id, status=ExecutionStatus.RUNNING
        ).update(
            status=status,
            exit_code=exit_code,
            error="cancelled" if cancelled else error,
            finished_at=now,
            log_path=log_path,
            log_tail=log_tail,
        )
        if not finished:
            logger.warning("execution not running, outcome ignored token=%s", token)
            return False
        _job_after_attempt(job, status=status, error=error, now=now)
        scheduler_wake()
        # Last, so the node row (every finish and every cycle needs it) is held briefly.
        allocation_release(execution_id=execution_id)
    logger.info(
        "execution finished job=%s token=%s status=%s exit_code=%s error=%r job_status=%s",
        job.id,
        token,
        status,
        exit_code,
        error,
        job.status,
    )
    return True


# A success is the common ending, so successes are one statement and one round trip,
# for a whole batch of them: their row locks (jobs, then executions, allocations and
# nodes, in the order above) are taken at once, never one by one while an agent thread
# waits for its turn to send the next statement, and the node row is written once per
# batch. An execution is left alone when its job has a cancel pending or is not live, or
# when it is not running; the general path then decides. The batch's executions are
# found by token first (materialized), so the plan starts from the handful of rows the
# batch is about, whatever the statistics say about the jobs table; a token reported
# twice counts once, with its first report.
_FINISH_SUCCEEDED_SQL = """
WITH outcome AS MATERIALIZED (
    SELECT DISTINCT ON (o.token) e.job_id, o.token, o.log_path, o.log_tail
      FROM unnest(%(tokens)s::text[], %(log_paths)s::text[], %(log_tails)s::text[])
           WITH ORDINALITY AS o(token, log_path, log_tail, n)
      JOIN jobs_jobexecution e ON e.token = o.token
     ORDER BY o.token, o.n
), job AS (
    SELECT j.id FROM jobs_job j
      JOIN outcome ON outcome.job_id = j.id
     WHERE j.status IN ('reserved', 'running') AND j.cancel_requested_at IS NULL
     ORDER BY j.id
       FOR UPDATE OF j
), execution AS (
    UPDATE jobs_jobexecution e
       SET status = 'succeeded', exit_code = 0, error = '', finished_at = %(now)s,
           log_path = outcome.log_path, log_tail = outcome.log_tail
      FROM job, outcome
     WHERE e.job_id = job.id AND e.token = outcome.token AND e.status = 'running'
 RETURNING e.id, e.job_id, e.token
), job_ended AS (
    UPDATE jobs_job j SET status = 'succeeded', pending_reason = '', finished_at = %(now)s
      FROM execution WHERE j.id = execution.job_id
), allocation AS (
    UPDATE resources_allocation a SET status = 'released', released_at = %(now)s
      FROM execution
     WHERE a.execution_id = execution.id AND a.status IN ('reserved', 'active')
 RETURNING a.node_id, a.cpu_millis, a.memory_mb, a.gpu
), node AS (
    UPDATE nodes_node n
       SET allocated_cpu_millis = n.allocated_cpu_millis - freed.cpu_millis,
           allocated_memory_mb = n.allocated_memory_mb - freed.memory_mb,
           allocated_gpu = n.allocated_gpu - freed.gpu
      FROM (SELECT node_id, sum(cpu_millis) AS cpu_millis, sum(memory_mb) AS memory_mb,
                   sum(gpu) AS gpu
              FROM allocation GROUP BY node_id) AS freed
     WHERE n.id = freed.node_id
)
SELECT execution.token, execution.job_id{wake} FROM execution
"""


@dataclass(frozen=True)
class Success:
    token: str
    log_path: str = ""
    log_tail: str = ""


def executions_finish_succeeded(
    successes: Sequence[Success], *, wake: bool = True
) -> dict[str, int]:
    """End running executions that succeeded, in one statement: execution, job,
    allocation and node counters, and (with `wake`) a wake-up for the scheduler. Returns
    {token: job id} of those it ended; the others (a cancel pending, a duplicate report)
    are for `execution_finish` to decide."""
    if not successes:
        return {}
    with prepared_cursor() as cursor:
        cursor.execute(
            _FINISH_SUCCEEDED_SQL.format(wake=", pg_notify(%(channel)s, '')" if wake else ""),
            {
                "tokens": [s.token for s in successes],
                "log_paths": [s.log_path for s in successes],
                "log_tails": [s.log_tail for s in successes],
                "now": timezone.now(),
                "channel": SCHEDULER_CHANNEL,
            },
        )
        ended = {token: job_id for token, job_id, *_ in cursor.fetchall()}
    for token, job_id in ended.items():
        logger.info(
            "execution finished job=%s token=%s status=succeeded exit_code=0", job_id, token
        )
    return ended


class JobStateError(ValidationError):
    """The job is not in a state that allows the action; answered as a 400 on `status`."""

    def __init__(self, message: str):
        super().__init__({"status": [message]})


def job_cancel(*, job: Job, user: User | None = None) -> Job:
    """Cancel a job. Pending or placed-but-unstarted: at once. Running: its node is asked
    to kill the process group, and the job becomes `cancelled` when the node confirms
    (or when the node is found lost)."""
    now = timezone.now()
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if job.status in TERMINAL_JOB_STATUSES:
            raise JobStateError(
                f"The job already ended ({job.status}); there is nothing to cancel."
            )
        if job.status == JobStatus.RESERVED:
            execution = job.last_execution
            unstarted = JobExecution.objects.filter(
                pk=execution.pk, status=ExecutionStatus.RESERVED
            ).update(status=ExecutionStatus.CANCELLED, error="cancelled", finished_at=now)
            if unstarted:
                allocation_release(execution_id=execution.pk)
                _end_job(job, JobStatus.CANCELLED, now)
            else:
                job.cancel_requested_at = now  # claimed meanwhile: it is running now
        elif job.status == JobStatus.PENDING:
            _end_job(job, JobStatus.CANCELLED, now)
            job.not_before = None
        else:
            job.cancel_requested_at = job.cancel_requested_at or now
        job.save(update_fields=[*JOB_LIFECYCLE_FIELDS, "cancel_requested_at"])
        scheduler_wake()
    logger.info(
        "job cancel job=%s by=%s status=%s", job.id, user.username if user else "-", job.status
    )
    return job


def job_requeue(*, job: Job, user: User | None = None) -> Job:
    """Run a failed or cancelled job again, as its next attempt, right away."""
    now = timezone.now()
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            raise JobStateError(
                f"Only a failed or cancelled job can be requeued; this one is {job.status}."
            )
        who = user.username if user else "an operator"
        _plan_retry(
            job=job, reason=f"requeued by {who}", delay_seconds=0, now=now, requested_by=user
        )
        job.acknowledged_at = job.cancel_requested_at = None
        job.save(update_fields=[*JOB_LIFECYCLE_FIELDS, "acknowledged_at", "cancel_requested_at"])
        scheduler_wake()
    return job


def job_acknowledge(*, job: Job, user: User | None = None) -> Job:
    """Take a failed job out of the dead-letter view without running it again."""
    updated = Job.objects.filter(
        pk=job.pk, status=JobStatus.FAILED, acknowledged_at__isnull=True
    ).update(acknowledged_at=timezone.now())
    job.refresh_from_db()
    if not updated and job.status != JobStatus.FAILED:
        raise JobStateError(f"Only a failed job can be acknowledged; this one is {job.status}.")
    return job


def execution_fail_over(*, execution_id: int, reason: str) -> bool:
    """An execution that will never report (its node or its process is gone): mark it
    lost, release its allocation, and retry the job elsewhere. A lost attempt counts as
    an attempt, but not against `max_retries`: it is the platform's failure, not the
    job's; NODE_LOST_MAX_RETRIES bounds it for a job that keeps killing its nodes."""
    now = timezone.now()
    with transaction.atomic():
        job_id = JobExecution.objects.filter(pk=execution_id).values_list("job_id", flat=True).get()
        job = Job.objects.select_for_update().get(pk=job_id)
        lost = JobExecution.objects.filter(
            pk=execution_id, status__in=(ExecutionStatus.RESERVED, ExecutionStatus.RUNNING)
        ).update(status=ExecutionStatus.LOST, error=reason, finished_at=now)
        if not lost:
            return False
        allocation_release(execution_id=execution_id)
        if job.status in (JobStatus.RESERVED, JobStatus.RUNNING):
            times_lost = job.executions.filter(status=ExecutionStatus.LOST).count()
            if job.cancel_requested_at is not None:
                _end_job(job, JobStatus.CANCELLED, now)
            elif times_lost <= settings.NODE_LOST_MAX_RETRIES:
                _plan_retry(job=job, reason=reason, delay_seconds=0, now=now)
            else:
                _end_job(job, JobStatus.FAILED, now)
            job.save(update_fields=JOB_LIFECYCLE_FIELDS)
        scheduler_wake()
    logger.warning(
        "execution lost job=%s execution=%s reason=%r job_status=%s",
        job.id,
        execution_id,
        reason,
        job.status,
    )
    return True


def executions_fail_over_node(*, node_id: int, reason: str) -> int:
    """Fail over every live execution of a node that is gone."""
    ids = list(
        JobExecution.objects.filter(
            node_id=node_id, status__in=(ExecutionStatus.RESERVED, ExecutionStatus.RUNNING)
        ).values_list("id", flat=True)
    )
    return sum(execution_fail_over(execution_id=i, reason=reason) for i in ids)


def executions_fail_over_unreported(*, grace_seconds: float) -> int:
    """Fail over running executions that their live node no longer reports.

    An agent tracks a token before claiming it and stops after finishing it, and stamps
    each heartbeat before it lists its tokens: an execution started before that stamp
    and missing from the list has no process on the node (it died, or the agent was
    restarted under it).
    """
    stale = list(
        JobExecution.objects.filter(
            status=ExecutionStatus.RUNNING,
            node__status__in=(NodeStatus.READY, NodeStatus.CORDONED, NodeStatus.DRAINING),
            started_at__lt=F("node__last_heartbeat") - timedelta(seconds=grace_seconds),
        ).values_list("id", "token", "node__name", "node__running_tokens")
    )
    failed_over = 0
    for execution_id, token, node_name, reported in stale:
        if token in reported:
            continue
        failed_over += execution_fail_over(
            execution_id=execution_id, reason=f"process vanished on node {node_name}"
        )
    return failed_over


def execution_release_stuck(*, execution_id: int, released_by: str) -> bool:
    """An operator releases the allocation of an execution that is stuck (its message is
    lost for good, or its agent is wedged): the allocation is released, exactly once; the
    execution, if not over, ends `failed` with an error saying so; and the job moves on as
    after any failed attempt (a retry if it has retries left, `cancelled` if a cancel was
    asked for).

    False, and nothing changes, when the allocation was already released. A process still
    running on the node is not stopped; its outcome is ignored when it reports.
    """
    now = timezone.now()
    error = f"allocation released by {released_by}: the execution was stuck"
    with transaction.atomic():
        job_id = JobExecution.objects.filter(pk=execution_id).values_list("job_id", flat=True)
        job = Job.objects.select_for_update().filter(pk__in=job_id).first()
        if job is None:
            return False
        ended = JobExecution.objects.filter(
            pk=execution_id, status__in=(ExecutionStatus.RESERVED, ExecutionStatus.RUNNING)
        ).update(status=ExecutionStatus.FAILED, error=error, finished_at=now)
        if ended and job.last_execution_id == execution_id:
            cancelled = job.cancel_requested_at is not None
            status = ExecutionStatus.CANCELLED if cancelled else ExecutionStatus.FAILED
            _job_after_attempt(job, status=status, error=error, now=now)
        # Last, as in a finish, so the node row is held briefly.
        released = allocation_release(execution_id=execution_id)
        if not (ended or released):
            return False
        scheduler_wake()
    logger.warning(
        "allocation released by an operator job=%s execution=%s by=%s job_status=%s",
        job.id,
        execution_id,
        released_by,
        job.status,
    )
    return True


def execution_republish_stale(*, older_than_seconds: float) -> int:
    """Re-publish reserved executions no node has claimed in time, with the same token.

    The broker may have lost the message (Redis is disposable); a duplicate is harmless
    because the node claims the token in the database before running anything.
    """
    now = timezone.now()
    cutoff = now - timedelta(seconds=older_than_seconds)
    stale = JobExecution.objects.filter(
        Q(republished_at__isnull=True) | Q(republished_at__lt=cutoff),
        status=ExecutionStatus.RESERVED,
        reserved_at__lt=cutoff,
    )
    tokens = list(stale.order_by("reserved_at").values_list("token", flat=True))
    if not tokens:
        return 0
    JobExecution.objects.filter(token__in=tokens).update(republished_at=now)
    logger.warning("re-publishing %s unclaimed executions: %s", len(tokens), " ".join(tokens[:20]))
    execution_publish_many(tokens=tokens)
    return len(tokens)
