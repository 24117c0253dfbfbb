"""The node agent's Celery task: claim an execution and run it, then whatever its
success placed on the room it freed. Registered only in node agents (`run_node`).

Each execution is a task of its own in the worker's events, sent by `task_events`
rather than by Celery, which sees one task for them all."""

import logging

from celery import shared_task

from resources.routing import EXECUTION_TASK

from ..models import ExecutionStatus
from .client import control_plane
from .runner import ExecutionToRun, TrackedExecution, run_job, running
from .success_batching import Claimed, Success, successes
from .supervision import current_node
from .task_events import Ended, ExecutionTask

logger = logging.getLogger(__name__)


@shared_task(name=EXECUTION_TASK, bind=True, ignore_result=True, send_events=False)
def run_execution(self, token: str) -> None:
    """Claim and run the execution, then whatever its success placed on the room it freed
    for this thread."""
    node_name = current_node()
    if node_name is None:
        logger.warning("execution message reached a process that is no node agent token=%s", token)
        return
    task = ExecutionTask.of_message(self.request, token)
    task.start()
    try:
        claimed = _claim(token, node_name)
        if claimed is None:
            task.dropped()
        while claimed is not None:
            ended, claimed = _run(*claimed, node_name)
            task.end(ended)
            if claimed is not None:
                task = task.next(claimed[0].token)
                task.start()
    except BaseException as exc:
        task.crashed(exc)
        raise


def _claim(token: str, node_name: str) -> Claimed | None:
    # Tracked before the claim, so no heartbeat can miss a claimed execution.
    tracked = running.track(token)
    if tracked is None:
        logger.info("dropped duplicate execution message token=%s node=%s", token, node_name)
        return None
    try:
        answer = control_plane().claim(token)
    except BaseException:
        running.untrack(tracked)
        raise
    if answer is None:
        running.untrack(tracked)
        logger.info(
            "dropped duplicate or stale execution message token=%s node=%s", token, node_name
        )
        return None
    return ExecutionToRun.of(answer), tracked


def _run(
    execution: ExecutionToRun, tracked: TrackedExecution, node_name: str
) -> tuple[Ended, Claimed | None]:
    """Run a claimed execution and report how it ended; returns that, and the execution
    claimed on the room its success freed, for this thread to run next, if any."""
    token = execution.token
    job_id, name = execution.job_id, execution.name
    try:
        try:
            outcome = run_job(execution=execution, node_name=node_name, tracked=tracked)
        except Exception as exc:
            logger.exception("agent failed to run execution token=%s node=%s", token, node_name)
            error = f"node agent error: {exc}"
            status = _finish(token=token, exit_code=None, error=error)
            return Ended(job_id, name, status, None, error), None
        if tracked.taken_away:
            logger.warning(
                "execution taken away: not reported job=%s attempt=%s node=%s token=%s",
                job_id,
                execution.attempt,
                node_name,
                token,
            )
            return Ended(job_id, name, None, outcome.exit_code, outcome.error), None
        ended_itself = not (outcome.cancelled or outcome.preempted)
        if outcome.exit_code == 0 and not outcome.error and ended_itself:
            success = Success(
                token=token,
                log_path=outcome.log_path,
                log_tail=outcome.log_tail,
                gpu_ids=outcome.gpu_ids,
            )
            reported = successes.report(success)
            if reported.ended:
                return Ended(job_id, name, ExecutionStatus.SUCCEEDED, 0, ""), reported.next
        status = _finish(
            token=token,
            exit_code=outcome.exit_code,
            error=outcome.error,
            log_path=outcome.log_path,
            log_tail=outcome.log_tail,
            cancelled=outcome.cancelled,
            preempted=outcome.preempted,
            gpu_ids=outcome.gpu_ids,
        )
        return Ended(job_id, name, status, outcome.exit_code, outcome.error), None
    finally:
        running.untrack(tracked)


def _finish(**outcome) -> ExecutionStatus | None:
    """Report an outcome other than a success (or a success the batch did not end);
    the status the server recorded, None when it ignored it (not running any more)."""
    status = control_plane().finish(**outcome)
    return None if status is None else ExecutionStatus(status)
