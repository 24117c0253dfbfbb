"""An execution's life on its node: claimed by the node about to run it, then finished
with its outcome, its allocation released and its job moved on.

Lock order here and in every service of this package: job, then execution, then
allocation, then node. The scheduling cycle locks nodes first but takes jobs with SKIP
LOCKED, so it never waits for a job lock; a node's freed room (`jobs.scheduling.
freed_room`) takes more jobs after its node, with SKIP LOCKED too, and its advisory lock
only if free, so it never waits either. Every status change is a conditional UPDATE on
the expected status, so a lost race (a duplicate message, a second worker) is detected
and changes nothing.
"""

import logging
from collections.abc import Sequence

from django.db import transaction
from django.utils import timezone

from common.wakeup import wake_after_commit

from ..accounting import (
    ClaimedExecution,
    EndedSuccesses,
    Success,
    allocation_release,
    claim_execution,
    successes_finish,
)
from ..models import ExecutionStatus, Job, JobExecution
from .array_slots import array_slots_release, array_task_ended
from .dependencies import dependents_settle
from .gangs import gang_task_ended
from .retries import job_after_attempt, job_after_preempted

logger = logging.getLogger(__name__)


def execution_claim(*, token: str, node_id: int) -> JobExecution | None:
    """Claim a reserved execution for the node about to run it, in one statement (see
    `jobs.accounting.claim_execution`).

    Returns None, and changes nothing, if the token is unknown, not meant for this node,
    or already claimed or finished: that message was a duplicate or stale.
    """
    now = timezone.now()
    execution = claim_execution(token=token, node_id=node_id, now=now)
    if execution is not None:
        job_started_settle(executions=[execution], now=now)
        logger.info(
            "execution claimed job=%s attempt=%s node=%s token=%s",
            execution.job_id,
            execution.attempt,
            node_id,
            token,
        )
    return execution


def execution_finish(
    *,
    token: str,
    exit_code: int | None,
    error: str = "",
    log_path: str = "",
    log_tail: str = "",
    cancelled: bool = False,
    preempted: bool = False,
    gpu_ids: Sequence[int] = (),
) -> ExecutionStatus | None:
    """Record how a running execution ended, release its allocation, and move the job on:
    to `succeeded`, `cancelled`, back to `pending` for a retry, or to `failed` (the
    dead-letter view) when out of retries (a gang's, once all its tasks ended: see
    `jobs.services.gangs`). An execution its node stopped because it was preempted
    (`preempted`, and the scheduler asked for it) ends `preempted`, and its job waits
    again without using a retry. Returns the execution's status as recorded;
    None when it was not running (a late or duplicate report), which changes nothing."""
    if exit_code == 0 and not error and not cancelled and not preempted:
        success = Success(token=token, log_path=log_path, log_tail=log_tail, gpu_ids=gpu_ids)
        if executions_finish_succeeded([success]):
            return ExecutionStatus.SUCCEEDED
    now = timezone.now()
    with transaction.atomic():
        found = (
            JobExecution.objects.filter(token=token)
            .values_list("id", "job_id", "attempt", "preempt_requested_at", "preempted_by_id")
            .first()
        )
        if found is None:
            return None
        execution_id, job_id, attempt, preempt_requested_at, preempted_by = found
        job = Job.objects.select_for_update().get(pk=job_id)
        cancelled = cancelled or job.cancel_requested_at is not None
        preempted = preempted and preempt_requested_at is not None and not cancelled
        if cancelled:
            status = ExecutionStatus.CANCELLED
        elif preempted:
            status = ExecutionStatus.PREEMPTED
        elif exit_code == 0 and not error:
            status = ExecutionStatus.SUCCEEDED
        else:
            status = ExecutionStatus.FAILED
        finished = JobExecution.objects.filter(
            pk=execution_id, status=ExecutionStatus.RUNNING
        ).update(
            status=status,
            exit_code=exit_code,
            error="cancelled"
            if cancelled
            else f"preempted by job {preempted_by}"
            if preempted
            else error,
            finished_at=now,
            log_path=log_path,
            log_tail=log_tail,
            gpu_ids=list(gpu_ids),
        )
        if not finished:
            logger.warning("execution not running, outcome ignored token=%s", token)
            return None
        if job.tasks > 1:
            gang_task_ended(job, attempt=attempt, status=status, error=error, now=now)
        elif preempted:
            job_after_preempted(job, preempted_by=preempted_by, now=now)
        else:
            job_after_attempt(job, status=status, error=error, now=now)
        wake_after_commit()
        # Last, so the node row (every finish and every cycle needs it) is held briefly.
        allocation_release(execution_id=execution_id, now=now)
        array_task_ended(job)
    logger.info(
        "execution finished job=%s token=%s status=%s exit_code=%s error=%r job_status=%s",
        job.id,
        token,
        status,
        exit_code,
        error,
        job.status,
    )
    return status


def executions_finish_succeeded(
    successes: Sequence[Success], *, wake: bool = True, node_id: int | None = None
) -> EndedSuccesses:
    """End running executions that succeeded, in one statement: execution, job,
    allocation and node counters, and (with `wake`) a wake-up for the scheduler once its
    transaction has committed (`wake_after_commit`: the statement holds the nodes' rows). Returns
    {token: job id} of those it ended; the others (a cancel pending, a duplicate report)
    are for `execution_finish` to decide. Given the reporting node's `node_id`, raises
    ExecutionOfAnotherNode, having changed nothing, if any is another node's."""
    if not successes:
        return EndedSuccesses()
    now = timezone.now()
    # One transaction with the dependents' release and the slots the arrays' tasks free
    # (no savepoint inside a caller's: the agent's batch rolls back whole).
    with transaction.atomic(savepoint=False):
        ended = successes_finish(successes, now=now, node_id=node_id)
        if ended.to_settle:
            dependents_settle(upstream_ids=ended.to_settle, now=now)
        array_slots_release(array_ids=ended.array_ids)
        if wake and ended:
            wake_after_commit()
    for token, job_id in ended.items():
        logger.info(
            "execution finished job=%s token=%s status=succeeded exit_code=0", job_id, token
        )
    return ended


def job_started_settle(*, executions: Sequence[JobExecution | ClaimedExecution], now) -> None:
    """Release what waits for the jobs of these executions (claimed just now) to start;
    the claim said which have such dependents (`releases_on_start`). The claim commits
    on its own, as one statement; should this process die before the release, the
    upstream's end settles the same dependents again."""
    job_ids = [e.job_id for e in executions if e.releases_on_start]
    if job_ids:
        with transaction.atomic():
            dependents_settle(upstream_ids=job_ids, now=now)
