"""Writes for jobs: submission, and the lifecycle of executions on nodes.

Lock order, shared with resources.cycle: job, then execution, then allocation, then
node. Every status change is a conditional UPDATE on the expected status, so a lost
race (a duplicate message, a second worker) is detected and changes nothing.
"""

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from celery.utils import uuid
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Team, User
from nodes.models import Node
from nodes.selectors import node_capacity_holds, node_capacity_maxima
from resources.models import DEFAULT_QUEUE_NAME, Queue
from resources.selectors import queue_list_for_team
from resources.services import allocation_activate, allocation_release, scheduler_wake
from scheduler_site.celery import app as celery_app

from .models import ExecutionStatus, Job, JobExecution, JobStatus, PendingReason

logger = logging.getLogger(__name__)

EXECUTION_TASK = "jobs.run_execution"
RETRY_BACKOFF_CAP_SECONDS = 3600


@dataclass(frozen=True)
class Submission:
    job: Job
    created: bool  # False when an earlier job with the same idempotency key was returned


def _format_cpu(cpu_millis: int) -> str:
    cores = cpu_millis / 1000
    return f"{cores:g} CPU"


def job_request_check_fits(*, cpu_millis: int, memory_mb: int, gpu: int) -> None:
    """Reject a request that no registered node could hold even when empty."""
    if node_capacity_holds(cpu_millis=cpu_millis, memory_mb=memory_mb, gpu=gpu):
        return
    largest = node_capacity_maxima()
    if largest["cpu_millis"] is None:
        raise ValidationError(
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
    raise ValidationError({"resources": messages})


def job_queue_for_team(*, team: Team, name: str) -> Queue:
    """The queue `name`, if `team` may submit into it; the same answer for a queue that
    does not exist and one the team may not use, so names of others' queues do not leak."""
    queue = queue_list_for_team(team=team).filter(name=name).first()
    if queue is None:
        raise ValidationError(
            {"queue": [f"No queue named {name!r} that team {team.slug} may submit to."]}
        )
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


def job_submit(*, team: Team, spec: dict, user: User | None = None) -> Submission:
    """Accept a job for `team`. `spec` holds validated JobSpec fields, with `queue` as a
    queue name (the default queue when absent), plus the job's own `idempotency_key` and
    `not_before`. Resubmitting a known idempotency key returns the first job unchanged."""
    key = spec.get("idempotency_key", "")
    if key:
        existing = Job.objects.filter(team=team, idempotency_key=key).first()
        if existing is not None:
            return Submission(job=existing, created=False)
    queue = job_queue_for_team(team=team, name=spec.get("queue", DEFAULT_QUEUE_NAME))
    request = {"cpu_millis": spec["cpu_millis"], "memory_mb": spec["memory_mb"], "gpu": spec["gpu"]}
    job_request_check_fits(**request)
    job_request_check_quota(queue=queue, **request)
    try:
        with transaction.atomic():
            job = Job.objects.create(team=team, submitted_by=user, **{**spec, "queue": queue})
            scheduler_wake()
    except IntegrityError:
        # A concurrent submission with the same key won the race; return its job.
        existing = Job.objects.filter(team=team, idempotency_key=key).first() if key else None
        if existing is None:
            raise
        return Submission(job=existing, created=False)
    logger.info("job submitted job=%s team=%s name=%s", job.id, team.slug, job.name)
    return Submission(job=job, created=True)


def execution_publish(*, token: str) -> None:
    """Send the execution's message; the router picks its node's queue.

    A message that cannot be sent is not an error here: the execution stays `reserved`
    in PostgreSQL, which is what reconciliation reads.
    """
    try:
        celery_app.send_task(EXECUTION_TASK, kwargs={"token": token})
    except Exception:
        logger.exception("could not publish execution token=%s", token)


def execution_publish_many(*, tokens: Sequence[str]) -> None:
    """Send many executions' messages over one producer connection, pipelined.

    The same messages `send_task` would send, routed by the same router, built and sent
    with the two calls `send_task` itself makes: its per-call option handling costs as
    much as the publishing when a cycle sends thousands. The queue is not re-declared per
    message: a node's queue is declared by its own worker, and a message for it is
    addressed to it by name. As with `execution_publish`, a failure here loses nothing:
    whatever was not sent stays `reserved` in PostgreSQL and reconciliation sends it again.
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


def execution_claim(*, token: str, node_name: str) -> JobExecution | None:
    """Claim a reserved execution for the node about to run it.

    Returns None, and changes nothing, if the token is unknown, not meant for this node,
    or already claimed or finished: that message was a duplicate or stale.
    """
    now = timezone.now()
    node_id = Node.objects.filter(name=node_name).values_list("id", flat=True).first()
    with transaction.atomic():
        # Only columns of the claimed row in the WHERE: a join here would become a
        # subquery that PostgreSQL does not re-check after waiting for a racing claim.
        claimed = JobExecution.objects.filter(
            token=token, status=ExecutionStatus.RESERVED, node_id=node_id
        ).update(status=ExecutionStatus.RUNNING, started_at=now)
        if not claimed:
            return None
        execution = JobExecution.objects.select_related("job", "node", "allocation").get(
            token=token
        )
        allocation_activate(execution_id=execution.id)
        Job.objects.filter(pk=execution.job_id, status=JobStatus.RESERVED).update(
            status=JobStatus.RUNNING, started_at=now
        )
    logger.info(
        "execution claimed job=%s attempt=%s node=%s token=%s",
        execution.job_id,
        execution.attempt,
        node_name,
        token,
    )
    return execution


def retry_delay_seconds(*, backoff_seconds: int, attempt: int) -> float:
    """Exponential back-off from `backoff_seconds`, doubled per attempt, capped, with jitter."""
    base = min(backoff_seconds * 2 ** (attempt - 1), RETRY_BACKOFF_CAP_SECONDS)
    return base * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not security


def _job_after_attempt(job: Job, *, succeeded: bool, now) -> None:
    """Move a locked job on once its current attempt has ended: to `succeeded`, back to
    `pending` for a retry, or to `failed` when out of retries."""
    if job.status not in (JobStatus.RESERVED, JobStatus.RUNNING):
        return
    if succeeded:
        job.status, job.finished_at = JobStatus.SUCCEEDED, now
    elif job.attempts <= job.max_retries:
        delay = retry_delay_seconds(backoff_seconds=job.retry_backoff_seconds, attempt=job.attempts)
        job.status, job.pending_reason = JobStatus.PENDING, PendingReason.WAITING_RETRY
        job.not_before = now + timedelta(seconds=delay)
    else:
        job.status, job.finished_at = JobStatus.FAILED, now
    job.save(update_fields=["status", "pending_reason", "not_before", "finished_at"])


def execution_finish(
    *, token: str, exit_code: int | None, error: str = "", log_path: str = "", log_tail: str = ""
) -> JobExecution | None:
    """Record how a running execution ended, release its allocation, and move the job on:
    to `succeeded`, back to `pending` for a retry, or to `failed` when out of retries."""
    now = timezone.now()
    succeeded = exit_code == 0 and not error
    status = ExecutionStatus.SUCCEEDED if succeeded else ExecutionStatus.FAILED
    with transaction.atomic():
        job_id = JobExecution.objects.filter(token=token).values_list("job_id", flat=True).first()
        if job_id is None:
            return None
        job = Job.objects.select_for_update().get(pk=job_id)
        finished = JobExecution.objects.filter(token=token, status=ExecutionStatus.RUNNING).update(
            status=status,
            exit_code=exit_code,
            error=error,
            finished_at=now,
            log_path=log_path,
            log_tail=log_tail,
        )
        if not finished:
            logger.warning("execution not running, outcome ignored token=%s", token)
            return None
        execution = JobExecution.objects.get(token=token)
        allocation_release(execution_id=execution.id)
        _job_after_attempt(job, succeeded=succeeded, now=now)
        scheduler_wake()
    logger.info(
        "execution finished job=%s attempt=%s node=%s token=%s status=%s exit_code=%s"
        " job_status=%s",
        job.id,
        execution.attempt,
        execution.node_id,
        token,
        status,
        exit_code,
        job.status,
    )
    return execution


def execution_release_stuck(*, execution_id: int, released_by: str) -> JobExecution | None:
    """An operator releases the allocation of an execution that is stuck (its node agent
    died, or its message was lost for good): the allocation is released, exactly once;
    the execution, if not over, ends `failed` with an error saying so; and the job moves
    on as after any failed attempt (a retry if it has retries left).

    Returns None, and changes nothing, when the allocation was already released. A
    process still running on the node is not stopped; its outcome is ignored when it
    reports.
    """
    now = timezone.now()
    error = f"allocation released by {released_by}: the execution was stuck"
    with transaction.atomic():
        job_id = JobExecution.objects.filter(pk=execution_id).values_list("job_id", flat=True)
        job = Job.objects.select_for_update().filter(pk__in=job_id).first()
        if job is None:
            return None
        ended = JobExecution.objects.filter(
            pk=execution_id, status__in=(ExecutionStatus.RESERVED, ExecutionStatus.RUNNING)
        ).update(status=ExecutionStatus.FAILED, error=error, finished_at=now)
        released = allocation_release(execution_id=execution_id)
        if not (ended or released):
            return None
        if ended and job.last_execution_id == execution_id:
            _job_after_attempt(job, succeeded=False, now=now)
        scheduler_wake()
        execution = JobExecution.objects.get(pk=execution_id)
    logger.warning(
        "allocation released by an operator job=%s attempt=%s node=%s token=%s by=%s job_status=%s",
        job.id,
        execution.attempt,
        execution.node_id,
        execution.token,
        released_by,
        job.status,
    )
    return execution


def execution_republish_stale(*, older_than_seconds: float) -> int:
    """Re-publish reserved executions no node has claimed in time, with the same token.

    The broker may have lost the message (Redis is disposable); a duplicate is harmless
    because the node claims the token in the database before running anything.
    """
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    tokens = list(
        JobExecution.objects.filter(status=ExecutionStatus.RESERVED, reserved_at__lt=cutoff)
        .order_by("reserved_at")
        .values_list("token", flat=True)
    )
    for token in tokens:
        logger.warning("re-publishing unclaimed execution token=%s", token)
        execution_publish(token=token)
    return len(tokens)
