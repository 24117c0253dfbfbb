"""Celery tasks for jobs. Thin: each fetches by token and calls services."""

import logging

from celery import shared_task
from django.conf import settings

from nodes.agent import current_node

from .models import JobExecution
from .reporting import Claimed, successes
from .runner import TrackedExecution, run_job, running
from .schedules import FIRE_TASK, schedule_fire
from .services import (
    EXECUTION_TASK,
    Success,
    execution_claim,
    execution_finish,
    execution_republish_stale,
    executions_fail_over_unreported,
)

logger = logging.getLogger(__name__)


@shared_task(name=EXECUTION_TASK, ignore_result=True)
def run_execution(token: str) -> None:
    """Claim and run the execution, then whatever its success hands on to this thread."""
    node = current_node()
    if node is None:
        logger.warning("execution message reached a process that is no node agent token=%s", token)
        return
    claimed = _claim(token, *node)
    while claimed is not None:
        claimed = _run(*claimed, *node)


def _claim(token: str, node_id: int, node_name: str) -> Claimed | None:
    # Tracked before the claim, so no heartbeat can miss a claimed execution.
    tracked = running.track(token)
    if tracked is None:
        logger.info("dropped duplicate execution message token=%s node=%s", token, node_name)
        return None
    try:
        execution = execution_claim(token=token, node_id=node_id)
    except BaseException:
        running.untrack(tracked)
        raise
    if execution is None:
        running.untrack(tracked)
        logger.info(
            "dropped duplicate or stale execution message token=%s node=%s", token, node_name
        )
        return None
    return execution, tracked


def _run(
    execution: JobExecution, tracked: TrackedExecution, node_id: int, node_name: str
) -> Claimed | None:
    """Run a claimed execution and report how it ended; returns the execution claimed
    on the room its success freed, for this thread to run next, if any."""
    token = execution.token
    try:
        tracked.memory_limit_mb = execution.job.memory_mb
        try:
            outcome = run_job(execution=execution, node_name=node_name, tracked=tracked)
        except Exception as exc:
            logger.exception("agent failed to run execution token=%s node=%s", token, node_name)
            execution_finish(token=token, exit_code=None, error=f"node agent error: {exc}")
            return None
        if outcome.exit_code == 0 and not outcome.error and not outcome.cancelled:
            success = Success(token=token, log_path=outcome.log_path, log_tail=outcome.log_tail)
            reported = successes.report(success, node_id=node_id)
            if reported.ended:
                return reported.next
        execution_finish(
            token=token,
            exit_code=outcome.exit_code,
            error=outcome.error,
            log_path=outcome.log_path,
            log_tail=outcome.log_tail,
            cancelled=outcome.cancelled,
        )
        return None
    finally:
        running.untrack(tracked)


@shared_task(name="jobs.reconcile_executions", ignore_result=True)
def reconcile_executions() -> dict:
    return {
        "republished": execution_republish_stale(
            older_than_seconds=settings.EXECUTION_DISPATCH_TIMEOUT_SECONDS
        ),
        "failed_over": executions_fail_over_unreported(
            grace_seconds=settings.NODE_HEARTBEAT_SECONDS
        ),
    }


@shared_task(name=FIRE_TASK, ignore_result=True)
def fire_schedule(schedule_id: int) -> None:
    """Sent by beat for a schedule's entry; works out by itself what is due."""
    schedule_fire(schedule_id=schedule_id)
