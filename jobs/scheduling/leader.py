"""The scheduler process: one leader at a time, woken by NOTIFY, with a safety tick.

The leader also runs node-loss handling and reconciliation at their intervals, between
cycles (never inside a cycle's transaction), so that lost nodes' jobs are failed over and
lost messages sent again with beat stopped. Beat's runs of the same services on the
control worker may overlap them: both are safe to run twice at once. It also folds ended
executions, schedule runs and retries into the metrics' tallies
(jobs.services.metrics_tallies), and works out the queues' past shares for fair share
(jobs.services.fair_share).

Leadership is a PostgreSQL session advisory lock held on a connection of its own, so it
ends the moment the leader's process or connection dies, and a standby takes it on
its next try. The same connection LISTENs for wake-ups.
"""

import contextlib
import logging
import os
import signal
import time

import psycopg
from django.conf import settings
from django.db import DatabaseError, InterfaceError, close_old_connections

from common.db import tables_analyze_when_changed
from common.wakeup import ARRIVAL, SCHEDULER_CHANNEL

from ..services.failover import (
    execution_republish_stale,
    executions_reconcile,
    nodes_lost_fail_over,
)
from ..services.fair_share import past_shares_refresh
from ..services.metrics_tallies import metrics_tallies_fold
from .cycle import run_cycle
from .metrics import SchedulerMetrics

logger = logging.getLogger(__name__)

# Arbitrary but fixed: the advisory lock that makes a scheduler the leader.
LEADER_LOCK_ID = 0x5C4ED
SHUTDOWN_POLL_SECONDS = 0.5
# The tables every job writes to, whose statistics the leader keeps up (see
# tables_analyze_when_changed).
BUSY_TABLES = (
    "jobs_job",
    "jobs_jobexecution",
    "jobs_joblogchunk",
    "resources_allocation",
    "events_event",
    "nodes_node",
)
# What the leader runs between cycles: (name, the setting holding its interval, service).
MAINTENANCE = (
    ("detect-lost-nodes", "NODE_LOST_CHECK_SECONDS", nodes_lost_fail_over),
    ("reconcile-executions", "RECONCILE_INTERVAL_SECONDS", executions_reconcile),
    ("fold-metrics-tallies", "METRICS_FOLD_SECONDS", metrics_tallies_fold),
    ("refresh-fair-share", "FAIR_SHARE_REFRESH_SECONDS", past_shares_refresh),
)


def leader_conninfo() -> dict:
    db = settings.DATABASES["default"]
    params = {
        "dbname": db["NAME"],
        "user": db.get("USER") or None,
        "password": db.get("PASSWORD") or None,
        "host": db.get("HOST") or None,
        "port": db.get("PORT") or None,
        # Names the process, so an operator (or a test) can tell which one leads.
        "application_name": f"scheduler-leader-{os.getpid()}",
    }
    return {k: v for k, v in params.items() if v is not None}


class Scheduler:
    def __init__(
        self,
        *,
        tick_seconds: float,
        batch_size: int,
        standby_seconds: float = 1.0,
        analyzed_tables: tuple[str, ...] = BUSY_TABLES,
    ):
        self.tick_seconds = tick_seconds
        self.batch_size = batch_size
        self.standby_seconds = standby_seconds
        self.conn: psycopg.Connection | None = None
        self.is_leader = False
        self.shutdown = False
        self.cluster_full = False  # the last cycle found no room on any ready node
        self.analyzed_tables = analyzed_tables
        self.next_analyze = 0.0  # time.monotonic() of the next look at analyzed_tables
        self.maintenance_due: dict[str, float] = {}  # name -> time.monotonic() of its next run
        self.metrics = SchedulerMetrics(is_leader=lambda: self.is_leader)

    def install_signal_handlers(self) -> None:
        def stop(signum, frame):
            logger.info("scheduler stopping on %s", signal.Signals(signum).name)
            self.shutdown = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def try_to_lead(self) -> bool:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(**leader_conninfo(), autocommit=True)
        acquired = self.conn.execute(
            "SELECT pg_try_advisory_lock(%s)", [LEADER_LOCK_ID]
        ).fetchone()[0]
        if acquired:
            # LISTEN before the first cycle, so nothing committed after it is missed.
            self.conn.execute(f"LISTEN {SCHEDULER_CHANNEL}")
            self.is_leader = True
            # The previous leader may have died between a cycle's commit and its publish;
            # a node claims each token once, so a second message for one is harmless.
            republished = execution_republish_stale(older_than_seconds=0)
            logger.info("scheduler is the leader; re-published %s reserved executions", republished)
        return acquired

    def wait_for_wakeup(self, timeout: float) -> None:
        """Return on a notification, after `timeout`, or soon after a shutdown request.

        While the last cycle found no room, a submission's wake-up only starts a gathering
        of further arrivals (SCHEDULER_FULL_COALESCE_SECONDS), since they can only be told
        why they wait. Any other wake-up may mean room, and ends the wait at once.
        """
        deadline = time.monotonic() + timeout
        gathering = False
        while not self.shutdown and (left := deadline - time.monotonic()) > 0:
            poll = min(left, SHUTDOWN_POLL_SECONDS)
            wakeups = list(self.conn.notifies(timeout=poll, stop_after=1))
            if not wakeups:
                continue
            if not self.cluster_full or any(w.payload != ARRIVAL for w in wakeups):
                break
            if not gathering:
                gathering = True
                gather = time.monotonic() + settings.SCHEDULER_FULL_COALESCE_SECONDS
                deadline = min(deadline, gather)
        # Gather what else commits in the next moment: one cycle then serves a burst of
        # submissions or completions, instead of one cycle each.
        for _ in self.conn.notifies(timeout=settings.SCHEDULER_COALESCE_SECONDS):
            pass

    def step(self) -> bool:
        """Run one cycle; True when there may be more to place right away."""
        close_old_connections()
        started = time.perf_counter()
        result = run_cycle(batch_size=self.batch_size)
        self.metrics.cycle_seconds.observe(time.perf_counter() - started)
        self.cluster_full = result.full
        return result.placed > 0 and result.batch_full

    def keep_statistics(self) -> None:
        """Every SCHEDULER_ANALYZE_SECONDS (0: never), analyze the busy tables that have
        changed enough since their last analyze."""
        interval = settings.SCHEDULER_ANALYZE_SECONDS
        if not interval or time.monotonic() < self.next_analyze:
            return
        self.next_analyze = time.monotonic() + interval
        analyzed = tables_analyze_when_changed(list(self.analyzed_tables))
        if analyzed:
            logger.info("analyzed %s", ", ".join(analyzed))

    def maintain(self) -> None:
        """Run each maintenance service whose interval has passed (0: never).

        A failure other than the database's is logged and tried again at the next
        interval: it must not stop placement.
        """
        for name, interval_setting, service in MAINTENANCE:
            interval = getattr(settings, interval_setting)
            now = time.monotonic()
            if not interval or now < self.maintenance_due.get(name, 0.0):
                continue
            self.maintenance_due[name] = now + interval
            close_old_connections()
            try:
                result = service()
            except (psycopg.Error, DatabaseError, InterfaceError):
                raise
            except Exception:
                logger.exception("scheduler maintenance %s failed", name)
                continue
            if any(result.values()) if isinstance(result, dict) else result:
                logger.info("scheduler maintenance %s: %s", name, result)

    def seconds_to_maintenance(self) -> float:
        """How long until the next maintenance service is due (inf when none runs)."""
        now = time.monotonic()
        return min(
            (
                max(0.0, self.maintenance_due.get(name, 0.0) - now)
                for name, interval_setting, _ in MAINTENANCE
                if getattr(settings, interval_setting)
            ),
            default=float("inf"),
        )

    def lose_leadership(self) -> None:
        self.is_leader = False
        # A new leadership starts with a round of maintenance.
        self.maintenance_due.clear()
        if self.conn is not None:
            # Unlocked before the close: a closed connection's backend lets go of the lock
            # only when it exits, a moment later, and a standby may be asking just then.
            with contextlib.suppress(psycopg.Error):
                self.conn.execute("SELECT pg_advisory_unlock_all()")
            self.conn.close()
        self.conn = None

    def run(self) -> None:
        while not self.shutdown:
            try:
                if not self.is_leader and not self.try_to_lead():
                    time.sleep(self.standby_seconds)
                    continue
                more = self.step()
                self.keep_statistics()
                self.maintain()
                if not more:
                    self.wait_for_wakeup(min(self.tick_seconds, self.seconds_to_maintenance()))
            except (psycopg.Error, DatabaseError, InterfaceError):
                logger.exception("scheduler lost the database; retrying")
                self.lose_leadership()
                time.sleep(self.standby_seconds)
        self.lose_leadership()
