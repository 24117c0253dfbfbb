"""The node agent's Celery task: claim an execution and run it, then whatever its
success placed on the room it freed. Registered only in node agents (`run_node`).

Each execution is a task of its own in the worker's events, sent by `task_events`
rather than by Celery, which sees one task for them all."""

import logging

from celery import shared_task

from resources.routing import EXECUTION_TASK

from ..accounting import Success
from ..models import ExecutionStatus, JobExecution
from ..services.executions import execution_claim, execution_finish
from .runner import TrackedExecution, run_job, running
from .success_batching import Claimed, successes
from .supervision import current_node
from .task_events import Ended, ExecutionTask

logger = logging.getLogger(__name__)


@shared_task(name=EXECUTION_TASK, bind=True, ignore_result=True, send_events=False)
def run_execution(self, token: str) -> None:
    """Claim and run the execution, then whatever its success placed on the room it freed
    for this thread."""
    node = current_node()
    if node is None:
        logger.warning("execution message reached a process that is no node agent token=%s", token)
        return
    task = ExecutionTask.of_message(self.request, token)
    task.start()
    try:
        claimed = _claim(token, *node)
        if claimed is None:
            task.dropped()
        while claimed is not None:
            ended, claimed = _run(*claimed, *node)
            task.end(ended)
            if claimed is not None:
                task = task.next(claimed[0].token)
                task.start()
    except BaseException as exc:
        task.crashed(exc)
        raise


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
) -> tuple[Ended, Claimed | None]:
    """Run a claimed execution and report how it ended; returns that, and the execution
    claimed on the room its success freed, for this thread to run next, if any."""
    token = execution.token
    job = execution.job
    try:
        tracked.memory_limit_mb = job.memory_mb
        try:
            outcome = run_job(execution=execution, node_name=node_name, tracked=tracked)
        except Exception as exc:
            logger.exception("agent failed to run execution token=%s node=%s", token, node_name)
            error = f"node agent error: {exc}"
            status = execution_finish(token=token, exit_code=None, error=error)
            return Ended(job.id, job.name, status, None, error), None
        if outcome.exit_code == 0 and not outcome.error and not outcome.cancelled:
            success = Success(token=token, log_path=outcome.log_path, log_tail=outcome.log_tail)
            reported = successes.report(success, node_id=node_id)
            if reported.ended:
                return Ended(job.id, job.name, ExecutionStatus.SUCCEEDED, 0, ""), reported.next
        status = execution_finish(
            token=token,
            exit_code=outcome.exit_code,
            error=outcome.error,
            log_path=outcome.log_path,
            log_tail=outcome.log_tail,
            cancelled=outcome.cancelled,
        )
        return Ended(job.id, job.name, status, outcome.exit_code, outcome.error), None
    finally:
        running.untrack(tracked)
