"""The node agent's task events: every execution it runs is a task of its own in Flower.

A message's task may run several executions in a row: its own, then each one that a
success placed on the room it freed (`success_batching`), which came without a message
and so without Celery's events. So `jobs.run_execution` sends none of Celery's
(`send_events=False`) and the agent sends, for each execution, what Celery sends for a
task: task-received and task-started as it starts, then task-succeeded, task-failed or
task-revoked (cancelled or preempted) with the runtime of that execution alone. The first
execution is the message's own task; each next one gets a uuid of its own, the same name and
kwargs, and the one before it as parent. The result names the job and how it ended:
`{'job': 7, 'name': 'report', 'outcome': 'failed', 'exit_code': 3, 'error': 'exit code 3'}`.

They go out through the worker's own event dispatcher, as Celery's task events do, so
`--task-events` and `celery control enable_events|disable_events` apply to them too. One
difference: a message's task-received goes out when a thread takes it up, not when the
worker reserves it, so a message waiting for a free thread is not listed yet.
"""

import time
import traceback
from typing import NamedTuple

from celery.utils import uuid
from celery.utils.saferepr import saferepr

from resources.routing import EXECUTION_TASK

from ..models import ExecutionStatus

_worker_consumer = None


def use_worker_dispatcher(sender, **kwargs) -> None:
    """`worker_ready` receiver: the worker's consumer, whose event dispatcher (a new one
    after each broker reconnection) sends the executions' events."""
    global _worker_consumer
    _worker_consumer = sender


def _send(event_type: str, **fields) -> None:
    dispatcher = getattr(_worker_consumer, "event_dispatcher", None)
    if dispatcher is not None and dispatcher.enabled:
        dispatcher.send(event_type, **fields)


class Ended(NamedTuple):
    """How an execution ended. `status` as PostgreSQL recorded it; None when the outcome
    was not recorded, the execution having been ended elsewhere (failed over, released)."""

    job_id: int
    name: str
    status: ExecutionStatus | None
    exit_code: int | None
    error: str


class ExecutionTask:
    """One execution as a `jobs.run_execution` task in the worker's events."""

    def __init__(self, task_id: str, token: str, *, root_id: str | None, parent_id: str | None):
        self.task_id = task_id
        self.token = token
        self.root_id = root_id
        self.parent_id = parent_id
        self._started = 0.0
        self._ended = False

    @classmethod
    def of_message(cls, request, token: str) -> "ExecutionTask":
        """The task of the message being run, with its Celery id and lineage."""
        root_id = request.root_id or request.id
        return cls(request.id, token, root_id=root_id, parent_id=request.parent_id)

    def next(self, token: str) -> "ExecutionTask":
        """The execution this thread runs next, on the room this one's success freed."""
        return ExecutionTask(uuid(), token, root_id=self.root_id, parent_id=self.task_id)

    def start(self) -> None:
        self._started = time.monotonic()
        _send(
            "task-received",
            uuid=self.task_id,
            name=EXECUTION_TASK,
            args="()",
            kwargs=saferepr({"token": self.token}),  # as a message's kwargs show
            root_id=self.root_id,
            parent_id=self.parent_id,
            retries=0,
            eta=None,
            expires=None,
        )
        _send("task-started", uuid=self.task_id)

    def end(self, ended: Ended) -> None:
        outcome = ended.status or "ignored"
        result = {
            "job": ended.job_id,
            "name": ended.name,
            "outcome": outcome,
            "exit_code": ended.exit_code,
        }
        if ended.error:
            result["error"] = ended.error
        fields = {"result": saferepr(result), "runtime": self._runtime()}
        if ended.status == ExecutionStatus.SUCCEEDED:
            self._finish("task-succeeded", **fields)
        elif ended.status in (ExecutionStatus.CANCELLED, ExecutionStatus.PREEMPTED):
            self._finish("task-revoked", terminated=True, signum=None, expired=False, **fields)
        else:
            exception = ended.error if ended.status else "outcome ignored: no longer running"
            self._finish("task-failed", exception=exception, traceback=None, **fields)

    def dropped(self) -> None:
        """The message's token was claimed already, or stale: nothing ran."""
        result = {"token": self.token, "outcome": "dropped"}
        self._finish("task-succeeded", result=saferepr(result), runtime=self._runtime())

    def crashed(self, exc: BaseException) -> None:
        """The agent itself failed while on this execution (its task raises)."""
        if not self._ended:
            self._finish("task-failed", exception=saferepr(exc), traceback=traceback.format_exc())

    def _runtime(self) -> float:
        return time.monotonic() - self._started

    def _finish(self, event_type: str, **fields) -> None:
        self._ended = True
        _send(event_type, uuid=self.task_id, **fields)
