"""The node agent's success batching: one writer thread that ends, in one transaction,
every success reported while its previous write was in flight, and places the jobs
waiting for room on the room those successes freed.

A task thread whose job succeeded hands the outcome over and waits until it is written,
so its execution stays tracked (and listed in heartbeats) until PostgreSQL has it. With
nothing in flight, a success is written at once; under load, a batch shares one commit
and one update of the node's counters, instead of each success waiting for the node row
in turn.

In the same transaction the node takes the jobs waiting for room, by the scheduler's
rules (`jobs.scheduling.freed_room.place_on_freed_room`). Each reporting thread gets one of
them, claimed for it in that transaction, to run next: no scheduler round trip, no
broker message and no claim of its own. Any more go out as messages on the node's
queue. When room is left (or the node placed nothing at all), the scheduler is woken to
do with it whatever it finds to do.
"""

import logging
import queue
import threading
from dataclasses import dataclass, field

from django.db import close_old_connections, connections, transaction

from common.wakeup import scheduler_wake
from resources.routing import routes_known

from ..accounting import Success
from ..models import JobExecution
from ..scheduling.freed_room import place_on_freed_room
from ..services.executions import executions_finish_succeeded
from ..services.publishing import executions_publish_on_commit
from .runner import TrackedExecution, running

logger = logging.getLogger(__name__)


# An execution claimed for this node, with its entry in the agent's registry.
Claimed = tuple[JobExecution, TrackedExecution]


@dataclass
class _Report:
    success: Success
    node_id: int
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

    def report(self, success: Success, *, node_id: int) -> Reported:
        """Write the success; returns whether it ended the execution (if not, the outcome
        is for `execution_finish`) and the execution this thread should run next, if any."""
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_forever, name="success-batching", daemon=True
                )
                self._writer.start()
        report = _Report(success, node_id)
        self._reports.put(report)
        report.done.wait()
        if report.error is not None:
            raise report.error
        return Reported(report.ended, report.next)

    def stop(self) -> None:
        """End the writer thread once it has written what was reported before; it closes
        its database connection. Reports after this start a new one."""
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            self._reports.put(None)
            writer.join()

    def _write_forever(self) -> None:
        while True:
            first = self._reports.get()
            if first is None:
                connections.close_all()
                return
            batch = [first]
            while (report := self._next_waiting()) is not None:
                batch.append(report)
            close_old_connections()
            try:
                placements = self._write(batch)
            except Exception as exc:  # handed to the waiting task threads, which log it
                for report in batch:
                    report.error = exc
                    report.done.set()
                continue
            for report in batch:
                report.done.set()
            self._publish(placements)

    def _next_waiting(self) -> "_Report | None":
        try:
            report = self._reports.get_nowait()
        except queue.Empty:
            return None
        if report is None:  # stop() comes once this batch is written
            self._reports.put(None)
        return report

    def _write(self, batch: list[_Report]) -> list[tuple[str, str]]:
        """End the batch's executions and place waiting jobs on the room they freed, in
        one transaction: as many as there are reporting threads are claimed and handed
        to them; returns the others, to be sent, as (token, node name)."""
        tracked: list[TrackedExecution] = []

        def track(tokens: list[str]) -> None:
            for token in tokens:
                entry = running.track(token)
                if entry is None:  # a token placed just now cannot be running yet
                    raise RuntimeError(f"placed execution already tracked token={token}")
                tracked.append(entry)

        try:
            with transaction.atomic():
                ended = executions_finish_succeeded([r.success for r in batch], wake=False)
                threads = [report for report in batch if report.success.token in ended]
                if not threads:
                    return []
                freed = None
                if self.fill_freed_room:
                    freed = place_on_freed_room(
                        node_id=batch[0].node_id, claim=len(threads), before_claim=track
                    )
                # Room left here, or a limit's slot freed, may let the scheduler place
                # jobs elsewhere.
                if freed is None or freed.room_left or ended.freed_limit_slots:
                    scheduler_wake()
        except BaseException:
            for entry in tracked:
                running.untrack(entry)
            raise
        for report in threads:
            report.ended = True
        if freed is None:
            return []
        for report, execution, entry in zip(threads, freed.claimed, tracked, strict=False):
            report.next = (execution, entry)
        tokens = [e.token for e in freed.claimed] + [token for token, _ in freed.placements]
        if tokens:
            logger.info(
                "placed on the room freed by %s successes: %s",
                len(threads),
                " ".join(f"token={token}" for token in tokens),
            )
        return freed.placements

    @staticmethod
    def _publish(placements: list[tuple[str, str]]) -> None:
        """More placed than threads reported: the rest go to the node's queue."""
        if placements:
            with routes_known(dict(placements)):
                executions_publish_on_commit(tokens=[token for token, _ in placements])


successes = SuccessBatcher()
