"""The node agent's reporter of successes: one writer thread that ends, in one statement,
every success reported while its previous write was in flight.

A task thread whose job succeeded hands the outcome over and waits until it is written,
so its execution stays tracked (and listed in heartbeats) until PostgreSQL has it. With
nothing in flight, a success is written at once; under load, a batch shares one commit
and one update of the node's counters, instead of each success waiting for the node row
in turn.
"""

import queue
import threading
from dataclasses import dataclass, field

from django.db import close_old_connections

from .services import Success, executions_finish_succeeded


@dataclass
class _Report:
    success: Success
    done: threading.Event = field(default_factory=threading.Event)
    ended: bool = False
    error: BaseException | None = None


class SuccessReporter:
    def __init__(self):
        self._reports: queue.SimpleQueue[_Report] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()

    def report(self, success: Success) -> bool:
        """True once the success is written; False when the execution was not ended by it
        (a cancel pending, or a duplicate), which is then for `execution_finish`."""
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_forever, name="success-reporter", daemon=True
                )
                self._writer.start()
        report = _Report(success)
        self._reports.put(report)
        report.done.wait()
        if report.error is not None:
            raise report.error
        return report.ended

    def _write_forever(self) -> None:
        while True:
            batch = [self._reports.get()]
            while True:
                try:
                    batch.append(self._reports.get_nowait())
                except queue.Empty:
                    break
            close_old_connections()
            try:
                ended = executions_finish_succeeded([r.success for r in batch])
            except Exception as exc:  # handed to the waiting task threads, which log it
                for report in batch:
                    report.error = exc
                    report.done.set()
                continue
            for report in batch:
                report.ended = report.success.token in ended
                report.done.set()


successes = SuccessReporter()
