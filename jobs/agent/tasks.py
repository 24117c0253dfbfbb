"""The node agent's Celery task: claim an execution and run it, then whatever its
success placed on the room it freed. Registered only in node agents (`run_node`)."""

import logging

from celery import shared_task

from resources.routing import EXECUTION_TASK

from ..accounting import Success
from ..models import JobExecution
from ..services.executions import execution_claim, execution_finish
from .runner import TrackedExecution, run_job, running
from .success_batching import Claimed, successes
from .supervision import current_node

logger = logging.getLogger(__name__)


@shared_task(name=EXECUTION_TASK, ignore_result=True)
def run_execution(token: str) -> None:
    """Claim and run the execution, then whatever its success placed on the room it freed
    for this thread."""
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
