"""Gangs: a job whose attempt runs as `tasks` executions (task 0 to N-1), placed all
together by the scheduling cycle, and ended together here. When one task fails, is
cancelled or is lost with its node, the others are stopped: those not started are
cancelled at once, the running ones are asked to stop through the cancel path
(`stop_requested_at`; their nodes are nudged to ask at once). Once none of the
attempt's executions is live, the attempt ends as one: succeeded when every task
succeeded, else failed (retried as a unit, one attempt counted), lost (retried at once)
or cancelled.

Callers hold the job's row lock (job, then executions, then allocations and nodes, as
everywhere)."""

import logging

from django.db.models import Q

from events.models import EventType

from ..accounting import allocation_release
from ..models import ExecutionStatus, Job, JobExecution
from .publishing import stop_checks_publish_on_commit
from .retries import job_after_attempt, job_after_lost_attempt
from .timeline import job_event

logger = logging.getLogger(__name__)

LIVE_EXECUTION_STATUSES = (ExecutionStatus.RESERVED, ExecutionStatus.RUNNING)


def gang_task_ended(job: Job, *, attempt: int, status: str, error: str, now) -> None:
    """One of the locked gang job's executions of `attempt` has just ended with `status`
    (already saved): stop the others unless it succeeded, and end the attempt once none
    of its executions is live. A late end of an earlier attempt changes nothing."""
    if attempt != job.attempts:
        return
    executions = JobExecution.objects.filter(job=job, attempt=attempt)
    if status != ExecutionStatus.SUCCEEDED:
        gang_stop_others(job, error=error, now=now)
    if executions.filter(status__in=LIVE_EXECUTION_STATUSES).exists():
        return
    ended = list(executions.order_by("finished_at", "task_index").values_list("status", "error"))
    failed = [e for s, e in ended if s == ExecutionStatus.FAILED]
    lost = [e for s, e in ended if s == ExecutionStatus.LOST]
    if job.cancel_requested_at is not None:
        job_after_attempt(job, status=ExecutionStatus.CANCELLED, error="cancelled", now=now)
    elif failed:
        job_after_attempt(job, status=ExecutionStatus.FAILED, error=failed[0], now=now)
    elif lost:
        attempts_lost = (
            JobExecution.objects.filter(job=job, status=ExecutionStatus.LOST)
            .values("attempt")
            .distinct()
            .count()
        )
        job_after_lost_attempt(job, reason=lost[0], attempts_lost=attempts_lost, now=now)
    elif all(s == ExecutionStatus.SUCCEEDED for s, _ in ended):
        job_after_attempt(job, status=ExecutionStatus.SUCCEEDED, error="", now=now)
    else:  # a task cancelled without a cancel of the job: an operator stopped it
        job_after_attempt(job, status=ExecutionStatus.FAILED, error="a task was cancelled", now=now)
    logger.info(
        "gang attempt ended job=%s attempt=%s tasks=%s job_status=%s",
        job.id,
        attempt,
        job.tasks,
        job.status,
    )


def gang_stop_others(job: Job, *, error: str, now) -> None:
    """Stop the live executions of the locked gang job's current attempt: cancel those
    not started (their allocations released), ask the nodes of the running ones to stop
    them. Those not started are locked first, so a claim racing for one either runs
    before (and it is asked to stop) or finds it cancelled."""
    attempt = JobExecution.objects.filter(job=job, attempt=job.attempts)
    unstarted = list(
        attempt.filter(status=ExecutionStatus.RESERVED)
        .select_for_update()
        .values_list("id", flat=True)
    )
    reason = f"stopped: another task of its gang ended ({error})"[:500]
    attempt.filter(id__in=unstarted).update(
        status=ExecutionStatus.CANCELLED, error=reason, finished_at=now
    )
    for execution_id in unstarted:
        allocation_release(execution_id=execution_id, now=now)
    stopping, nodes = [], set()
    for task_index, node_name in (
        attempt.filter(Q(stop_requested_at__isnull=True), status=ExecutionStatus.RUNNING)
        .order_by("task_index")
        .values_list("task_index", "node__name")
    ):
        stopping.append(task_index)
        nodes.add(node_name)
    attempt.filter(task_index__in=stopping).update(stop_requested_at=now)
    stop_checks_publish_on_commit(node_names=nodes)
    if unstarted or stopping:
        job_event(
            job,
            EventType.JOB_GANG_STOPPING,
            f"attempt {job.attempts}: a task ended ({error}); stopping the other tasks",
            attempt=job.attempts,
            data={"error": error[:500], "cancelled": len(unstarted), "stopping": stopping},
            at=now,
        )
