"""The cluster's figures, read from PostgreSQL: each reader is one aggregate statement,
whatever the number of jobs, nodes or queues. `collector` turns them into Prometheus
metrics; `summary` reads some of them through a caller's teams.

Counters are counted from rows that never change back, so they only grow: attempts
that ended (an ended execution never un-ends, whereas a failed job that is requeued
leaves `failed`), executions ever created, `JobRetry`, `NodeLoss` and `JobScheduleRun`
rows. Ended executions, schedule runs and retries are read from their tallies once
folded (jobs.services.metrics_tallies), so deleting a team's jobs or a schedule takes
back only what was not yet folded.
"""

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import accumulate

from django.db import connection
from django.db.models import Count, Min, Q, QuerySet
from django.db.models.functions import Coalesce, Greatest

from resources.models import LIVE_ALLOCATION_STATUSES

from ..models import (
    WAITING_NOT_BEFORE,
    WAITING_SCHEDULER,
    Job,
    JobStatus,
    PendingReason,
    ScheduleRunOutcome,
)
from ..scheduling.leader import LEADER_LOCK_ID
from ..services.metrics_tallies import (
    ENDED_EXECUTION_STATUSES,
    EXECUTION_COLUMNS,
    LATENESS_BUCKETS,
    LATENESS_SECONDS,
    RUN_BUCKETS,
    WAIT_BUCKETS,
    bucket_fits,
)

LIVE_JOB_STATUSES = (JobStatus.PENDING, JobStatus.RESERVED, JobStatus.RUNNING)
# A pending job with no reason stored still needs a label (see jobs.models); alerts on a
# stalled scheduler skip the ones waiting for their not_before.


def reason_label(reason: str) -> str:
    return reason or WAITING_SCHEDULER


PENDING_REASON_LABELS = (
    *(reason_label(reason) for reason in PendingReason.values),
    WAITING_NOT_BEFORE,
)


@dataclass
class Observations:
    """One histogram series, from rows of (bounds at or above the value, count, sum)."""

    count: int = 0
    total: float = 0.0
    fits: dict = field(default_factory=lambda: defaultdict(int))

    def add(self, fits: int | None, count: int, total: float) -> None:
        if fits is not None and count:
            self.count += count
            self.total += total
            self.fits[fits] += count

    def buckets(self, bounds: Sequence[float]) -> list[tuple[str, int]]:
        """Cumulative counts at each bound, then +Inf."""
        at_bound = [self.fits.get(len(bounds) - i, 0) for i in range(len(bounds))]
        cumulative = accumulate(at_bound)
        return [
            *zip((repr(float(b)) for b in bounds), cumulative, strict=True),
            ("+Inf", self.count),
        ]


# --- Jobs not yet ended ----------------------------------------------------------------


@dataclass
class LiveJobs:
    """Jobs not yet ended, per queue id: by status, pending ones by reason label, and
    since when the longest-waiting due one has been due."""

    now: datetime
    counts: dict = field(default_factory=lambda: defaultdict(int))  # (queue, status)
    reasons: dict = field(default_factory=lambda: defaultdict(int))  # (queue, reason label)
    due_since: dict = field(default_factory=dict)  # queue -> datetime

    def oldest_age_seconds(self, queue_id: int) -> float | None:
        since = self.due_since.get(queue_id)
        return None if since is None else max((self.now - since).total_seconds(), 0.0)


def live_jobs(*, jobs: QuerySet[Job], now) -> LiveJobs:
    """`jobs` not yet ended (served by the job_status_created index: the live statuses are
    a small part of all jobs). A job is due from its creation, or from its not_before (a
    retry's due time) when that is later; a job not yet due is not waiting."""
    due = Q(status=JobStatus.PENDING) & (Q(not_before__isnull=True) | Q(not_before__lte=now))
    rows = (
        jobs.filter(status__in=LIVE_JOB_STATUSES)
        .values_list("queue_id", "status", "pending_reason")
        .annotate(
            n=Count("id"),
            due_since=Min(Greatest("created_at", Coalesce("not_before", "created_at")), filter=due),
            not_due=Count("id", filter=Q(status=JobStatus.PENDING) & ~due),
        )
        .order_by()
    )
    live = LiveJobs(now=now)
    for queue_id, status, reason, n, due_since, not_due in rows:
        live.counts[queue_id, status] += n
        if status == JobStatus.PENDING and not reason:
            live.reasons[queue_id, WAITING_SCHEDULER] += n - not_due
            live.reasons[queue_id, WAITING_NOT_BEFORE] += not_due
        elif status == JobStatus.PENDING:
            live.reasons[queue_id, reason_label(reason)] += n
        if due_since is not None:
            live.due_since[queue_id] = min(live.due_since.get(queue_id, due_since), due_since)
    return live


def dead_letter_counts(*, jobs: QuerySet[Job]) -> dict[int, int]:
    """{queue id: failed jobs neither requeued nor acknowledged}."""
    return dict(jobs.dead_letter().values_list("queue_id").annotate(Count("id")).order_by())


# Retries not yet folded, by their job's queue, then the tally of those folded.
RETRIES_SQL = """
SELECT j.queue_id, count(*)
  FROM jobs_jobretry r JOIN jobs_job j ON j.id = r.job_id
 WHERE NOT r.metrics_folded
 GROUP BY j.queue_id
UNION ALL
SELECT queue_id, retries FROM jobs_retrytally
"""


def retry_counts() -> dict[int, int]:
    """{queue id: retries ever planned}."""
    counts: dict[int, int] = defaultdict(int)
    for queue_id, n in _rows(RETRIES_SQL, {}):
        counts[queue_id] += n
    return counts


# What the node figures read of each node, in this order.
NODE_COLUMNS = (
    "name",
    "status",
    "last_heartbeat",
    "cpu_millis",
    "memory_mb",
    "gpu",
    "allocated_cpu_millis",
    "allocated_memory_mb",
    "allocated_gpu",
    "used_cpu_millis",
    "used_memory_mb",
)


# --- Executions ------------------------------------------------------------------------

# Every execution, once: those not yet folded, read with their job, grouped two ways: by
# queue, status and run-time bucket (placements, attempts ended, run times), and by queue
# and wait bucket; then the tallies of those folded, in the same groups. One statement,
# so a fold that commits meanwhile is seen whole or not at all. Last, what each queue's
# live allocations hold (rows with no status), through their index by queue. OFFSET 0
# keeps the subquery whole, so each row's times are worked out once, not once per use.
EXECUTIONS_SQL = f"""
SELECT GROUPING(status) = 1 AS of_waits, queue_id, status,
       width_bucket(-run, %(run_fits)s::float8[]) AS run_fits,
       width_bucket(-wait, %(wait_fits)s::float8[]) AS wait_fits,
       count(*), count(run), coalesce(sum(run), 0), count(wait), coalesce(sum(wait), 0),
       0, 0, 0
  FROM (SELECT {EXECUTION_COLUMNS}
          FROM jobs_jobexecution e
          JOIN jobs_job j ON j.id = e.job_id
         WHERE NOT e.metrics_folded
        OFFSET 0) AS execution
 GROUP BY GROUPING SETS ((queue_id, status, run_fits), (queue_id, wait_fits))
UNION ALL
SELECT of_waits, queue_id, status,
       CASE WHEN NOT of_waits AND bucket >= 0 THEN bucket END,
       CASE WHEN of_waits THEN bucket END,
       executions, runs, run_seconds, waits, wait_seconds, 0, 0, 0
  FROM jobs_executiontally
UNION ALL
SELECT false, queue_id, NULL, NULL, NULL, 0, 0, 0, 0, 0,
       sum(cpu_millis), sum(memory_mb), sum(gpu)
  FROM resources_allocation
 WHERE status = ANY(%(live)s::text[])
 GROUP BY queue_id
"""


@dataclass
class ExecutionFigures:
    placements: int = 0  # executions ever created
    finished: dict = field(default_factory=lambda: defaultdict(int))  # (queue, outcome)
    runs: dict = field(default_factory=lambda: defaultdict(Observations))  # (queue, outcome)
    waits: dict = field(default_factory=lambda: defaultdict(Observations))  # queue
    # queue -> [cpu millis, memory MB, gpu] of its live allocations
    allocated: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))


def execution_figures() -> ExecutionFigures:
    figures = ExecutionFigures()
    params = {
        "run_fits": bucket_fits(RUN_BUCKETS),
        "wait_fits": bucket_fits(WAIT_BUCKETS),
        "live": list(LIVE_ALLOCATION_STATUSES),
    }
    for row in _rows(EXECUTIONS_SQL, params):
        of_waits, queue_id, status, run_fits, wait_fits, n, *sums = row
        ran, run_total, waited, wait_total, *held = sums
        if of_waits:
            figures.waits[queue_id].add(wait_fits, waited, wait_total)
            continue
        if status is None:
            queue_held = figures.allocated[queue_id]
            for i, amount in enumerate(held):
                queue_held[i] += amount
            continue
        figures.placements += n
        if status in ENDED_EXECUTION_STATUSES:
            figures.finished[queue_id, status] += n
            figures.runs[queue_id, status].add(run_fits, ran, run_total)
    return figures


# --- Schedules and the rest ------------------------------------------------------------

# Schedule runs not yet folded, then the tally of those folded.
SCHEDULE_RUNS_SQL = f"""
SELECT outcome, width_bucket(-late, %(fits)s::float8[]), count(*), sum(late)
  FROM (SELECT r.outcome, {LATENESS_SECONDS} AS late
          FROM jobs_jobschedulerun r
         WHERE NOT r.metrics_folded) AS run
 GROUP BY 1, 2
UNION ALL
SELECT outcome, bucket, runs, late_seconds FROM jobs_scheduleruntally
"""


def schedule_run_figures() -> tuple[dict[str, int], Observations]:
    """{outcome: runs}, and how late every run fired (fired time minus due time); a
    backfilled run is not late, it was asked for long after its due time."""
    runs: dict[str, int] = defaultdict(int)
    lateness = Observations()
    params = {"fits": bucket_fits(LATENESS_BUCKETS)}
    for outcome, fits, n, total in _rows(SCHEDULE_RUNS_SQL, params):
        runs[outcome] += n
        if outcome != ScheduleRunOutcome.BACKFILLED:
            lateness.add(fits, n, total)
    return runs, lateness


# Whether some session holds the scheduler's leader lock in this database (a bigint
# advisory lock shows as classid = high half, objid = low half, objsubid = 1).
SCALARS_SQL = """
SELECT (SELECT count(*) FROM nodes_nodeloss),
       EXISTS (SELECT 1 FROM pg_locks
                WHERE locktype = 'advisory' AND granted AND objsubid = 1
                  AND classid = %(lock_high)s AND objid = %(lock_low)s
                  AND database = (SELECT oid FROM pg_database
                                   WHERE datname = current_database()))
"""


def nodes_lost_and_leader() -> tuple[int, bool]:
    """How many times a node was lost, and whether some scheduler leads now."""
    params = {"lock_high": LEADER_LOCK_ID >> 32, "lock_low": LEADER_LOCK_ID & 0xFFFFFFFF}
    [(lost, leader)] = _rows(SCALARS_SQL, params)
    return lost, leader


def _rows(sql: str, params: dict) -> Iterable[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()
