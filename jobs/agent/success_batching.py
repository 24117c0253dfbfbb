"""The node agent's success batching: one writer thread that reports, in one request,
every success reported while its previous request was in flight; the server ends them
in one transaction and places the jobs waiting for room on the room they freed.

A task thread whose job succeeded hands the outcome over and waits until it is written,
so its execution stays tracked (and listed in heartbeats) until the server has it. With
nothing in flight, a success is sent at once; under load, a batch shares one request,
one commit and one update of the node's counters, instead of each success waiting for
the node row in turn. While the server cannot be reached the request is sent again with
back-off (`client`), and the successes reported meanwhile wait for the next one.

In the same transaction, on the server, the node takes the jobs waiting for room, by
the scheduler's rules (`jobs.scheduling.freed_room.successes_report`). Each reporting
thread gets one of them, claimed for it in that transaction, to run next: no scheduler
round trip, no broker message and no claim of its own. Any more go out as messages on
the node's queue.

Those threads run their jobs at once, so under load they end about together, and their
successes would miss the request sent for the threads that reported meanwhile: the
node's threads would split into groups that take turns, each waiting for the others'
round trip as well as its own. So the writer waits for the executions the last answer
handed out, at most as long as that request took (past that, sending first is the
faster way), before it sends what is waiting; any other time, and once they have all
reported, it sends at once.
"""

import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass, field

from .client import control_plane
from .runner import ExecutionToRun, TrackedExecution, running

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Success:
    token: str
    log_path: str = ""
    log_tail: str = ""
    gpu_ids: tuple[int, ...] = ()


_STOP = object()  # stop()'s marker, as `_next_waiting` answers it

# An execution claimed for this node, with its entry in the agent's registry.
Claimed = tuple[ExecutionToRun, TrackedExecution]


@dataclass
class _Report:
    success: Success
    done: threading.Event = field(default_factory=threading.Event)
    ended: bool = False
    next: Claimed | None = None
    error: BaseException | None = None


@dataclass(frozen=True)
class Reported:
    ended: bool  # False: not ended by this report (a cancel pending, or a duplicate)
    next: Claimed | None  # placed on the freed room and claimed, for this thread to run


class SuccessBatcher:
    def __init__(self):
        self._reports: queue.SimpleQueue[_Report | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()
        # Cleared when the agent shuts down: its room is then left to the scheduler.
        self.fill_freed_room = True
        # The executions the last answer handed to the reporting threads, not reported
        # yet, and until when (monotonic) the writer waits for them (see `_gather`).
        self._awaited: set[str] = set()
        self._linger_until = 0.0

    def report(self, success: Success) -> Reported:
        """Write the success; returns whether it ended the execution (if not, the outcome
        is for `execution_finish`) and the execution this thread should run next, if any."""
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_forever, name="success-batching", daemon=True
                )
                self._writer.start()
        report = _Report(success)
        self._reports.put(report)
        report.done.wait()
        if report.error is not None:
            raise report.error
        return Reported(report.ended, report.next)

    def stop(self) -> None:
        """End the writer thread once it has written what was reported before. Reports
        after this start a new one."""
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            self._reports.put(None)
            writer.join()

    def _write_forever(self) -> None:
        while True:
            first = self._reports.get()
            if first is None:
                return
            batch = self._gather(first)
            try:
                self._write(batch)
            except BaseException as exc:  # handed to the waiting task threads, which log it
                for report in batch:
                    report.error = exc
                    report.done.set()
                continue
            for report in batch:
                report.done.set()

    def _gather(self, first: _Report) -> list[_Report]:
        """The batch that starts with `first`: every report waiting now, and then, while
        any execution the last answer handed out has not reported, those that come until
        the linger ends (see the module's docstring)."""
        batch = [first]
        awaited = self._awaited
        awaited.discard(first.success.token)
        while True:
            report = self._next_waiting()
            if report is None and awaited:
                linger = self._linger_until - time.monotonic()
                report = self._next_waiting(timeout=linger) if linger > 0 else None
            if report is None or report is _STOP:
                break
            batch.append(report)
            awaited.discard(report.success.token)
        awaited.clear()
        return batch

    def _next_waiting(self, timeout: float | None = None) -> "_Report | object | None":
        """The next report, None if none came (within `timeout`), _STOP for stop()'s."""
        try:
            if timeout is None:
                report = self._reports.get_nowait()
            else:
                report = self._reports.get(timeout=timeout)
        except queue.Empty:
            return None
        if report is None:  # stop() comes once this batch is written
            self._reports.put(None)
            return _STOP
        return report

    def _write(self, batch: list[_Report]) -> None:
        """Report the batch's successes; the server ends them and places waiting jobs on
        the room they freed, as many claimed for the reporting threads as ended."""
        sent = time.monotonic()
        answer = control_plane().successes(
            successes=[asdict(r.success) for r in batch],
            claim=len(batch) if self.fill_freed_room else 0,
            fill_freed_room=self.fill_freed_room,
        )
        ended = set(answer["ended"])
        threads = [report for report in batch if report.success.token in ended]
        for report in threads:
            report.ended = True
        claimed = [ExecutionToRun.of(item) for item in answer["claimed"]]
        answered = time.monotonic()
        self._awaited = {e.token for e in claimed}
        self._linger_until = answered + (answered - sent)  # as long as this request took
        for report, execution in zip(threads, claimed, strict=False):
            entry = running.track(execution.token)
            if entry is None:  # a token placed just now cannot be running yet
                logger.error("placed execution already tracked token=%s", execution.token)
                continue
            report.next = (execution, entry)
        if claimed:
            logger.info(
                "took on the room freed by %s successes: %s",
                len(threads),
                " ".join(f"token={e.token}" for e in claimed),
            )


successes = SuccessBatcher()
