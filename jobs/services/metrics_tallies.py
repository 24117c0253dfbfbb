"""The metrics' counts of rows that never change, folded into tallies so that a scrape
need not read the whole history: ended executions (per queue), schedule runs and
retries; and what ended executions used, by day, team, queue and submitter
(`UsageTally`, read by `jobs.usage_report`), which must outlive the jobs that retention
purges.

An execution that has ended never changes what it counts for (its queue, outcome, run
time and, on a job's first attempt that started, the job's wait); a schedule run (its
outcome and lateness) and a retry (its job's queue) never change at all. So each can be
counted once and for all: `metrics_tallies_fold` adds a batch of them to their tallies
(`ExecutionTally` and `UsageTally`, `ScheduleRunTally`, `RetryTally`) and marks them
`metrics_folded`, in one statement. A scrape (and the usage report) reads each tally and
the rows not yet folded in one statement too, so it sees every row exactly once, before
or after a fold; and deleting rows (a team's jobs, a schedule's runs) takes back only
what was not yet folded.

The tallies keep bucket numbers, not seconds: changing RUN_BUCKETS, WAIT_BUCKETS or
LATENESS_BUCKETS takes a migration that empties the tally and clears `metrics_folded`.
"""

import time
from collections.abc import Sequence

from django.db import connection, transaction

from common.db import without_jit

from ..models import ExecutionStatus
from ..usage_report import RUN_END, USAGE_COLUMNS, USAGE_SUMS, usage_rows

# Seconds. A job waits milliseconds on free room, and hours in a backlog.
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
RUN_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400)
LATENESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

ENDED_EXECUTION_STATUSES = (
    ExecutionStatus.SUCCEEDED,
    ExecutionStatus.FAILED,
    ExecutionStatus.CANCELLED,
    ExecutionStatus.LOST,
    ExecutionStatus.PREEMPTED,
)

# Folds serialize on this transaction-level advisory lock; one that finds it taken
# leaves the work to the one running.
TALLY_FOLD_LOCK_ID = 0x5C4EF
TALLY_FOLD_BATCH = 5000
# How late a schedule run `r` fired, clamped at 0.
LATENESS_SECONDS = "greatest(date_part('epoch', r.fired_at - r.due_at), 0)"


def bucket_fits(bounds: Sequence[float]) -> list[float]:
    """The thresholds that make `width_bucket(-value, thresholds)` the number of bounds at
    or above the value (a histogram's bucket `le` holds values equal to its bound)."""
    return sorted(-float(bound) for bound in bounds)


# How long an execution ran, from start to end; null unless it did both. Clamped at 0
# against clock skew between the hosts that wrote the two times (after the null check:
# greatest() ignores nulls).
RUN_SECONDS = """CASE WHEN e.started_at IS NOT NULL AND e.finished_at IS NOT NULL
               THEN greatest(date_part('epoch', e.finished_at - e.started_at), 0) END"""

WAIT_SECONDS = "greatest(date_part('epoch', e.started_at - j.created_at), 0)"

# What each execution `e` (with its job `j`) counts for: its queue, status, run time and
# wait. A job's wait is counted on its first attempt that started, from the job's
# creation: a later attempt is that only when no earlier one started (rare: checked only
# for attempts after the first).
EXECUTION_COLUMNS = f"""j.queue_id, e.status, {RUN_SECONDS} AS run,
               CASE WHEN e.started_at IS NULL THEN NULL
                    WHEN e.attempt = 1 THEN {WAIT_SECONDS}
                    WHEN NOT EXISTS (
                        SELECT 1 FROM jobs_jobexecution earlier
                         WHERE earlier.job_id = e.job_id AND earlier.attempt < e.attempt
                           AND earlier.started_at IS NOT NULL)
                    THEN {WAIT_SECONDS} END AS wait"""


def _take_batch(table: str, returning: str, where: str = "") -> str:
    """The common table expressions `batch` and `folded`: up to %(limit)s rows of `table`
    not yet folded (and matching `where`), in id order, skipping any that another
    transaction holds, marked folded; `folded` returns `returning` of each (the table is
    `r`)."""
    return f"""batch AS (
    SELECT id FROM {table}
     WHERE NOT metrics_folded {where}
     ORDER BY id LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), folded AS (
    UPDATE {table} r SET metrics_folded = true
      FROM batch WHERE r.id = batch.id
    RETURNING {returning}
)"""


ENDED_EXECUTIONS_BATCH = _take_batch(
    "jobs_jobexecution",
    "r.id, r.job_id, r.attempt, r.status, r.started_at, r.finished_at",
    "AND status = ANY(%(ended)s::text[])",
)

# A batch of ended executions, marked folded and added to the tallies (a data-modifying
# WITH runs whether or not the statement reads it), grouped as the scrape groups them:
# by queue, status and run bucket (bucket -1: it did not run), and by queue and wait
# bucket (only executions that carry their job's wait). OFFSET 0 keeps the subquery
# whole, so each row's times are worked out once, not once per use.
EXECUTIONS_FOLD_SQL = f"""
WITH {ENDED_EXECUTIONS_BATCH}, tallies AS (
    SELECT GROUPING(status) = 1 AS of_waits, queue_id, coalesce(status, '') AS status,
           CASE WHEN GROUPING(status) = 1 THEN wait_fits ELSE coalesce(run_fits, -1) END
               AS bucket,
           count(*) AS executions, count(run) AS runs, coalesce(sum(run), 0) AS run_seconds,
           count(wait) AS waits, coalesce(sum(wait), 0) AS wait_seconds
      FROM (SELECT queue_id, status, run, wait,
                   width_bucket(-run, %(run_fits)s::float8[]) AS run_fits,
                   width_bucket(-wait, %(wait_fits)s::float8[]) AS wait_fits
              FROM (SELECT {EXECUTION_COLUMNS}
                      FROM folded e JOIN jobs_job j ON j.id = e.job_id
                    OFFSET 0) AS execution) AS bucketed
     GROUP BY GROUPING SETS ((queue_id, status, run_fits), (queue_id, wait_fits))
), added AS (
    INSERT INTO jobs_executiontally AS t
           (queue_id, of_waits, status, bucket, executions, runs, run_seconds, waits,
            wait_seconds)
    SELECT queue_id, of_waits, status, bucket, executions, runs, run_seconds, waits,
           wait_seconds
      FROM tallies
     WHERE NOT of_waits OR waits > 0
     ORDER BY queue_id, of_waits, status, bucket
        ON CONFLICT (queue_id, of_waits, status, bucket) DO UPDATE
       SET executions = t.executions + excluded.executions,
           runs = t.runs + excluded.runs,
           run_seconds = t.run_seconds + excluded.run_seconds,
           waits = t.waits + excluded.waits,
           wait_seconds = t.wait_seconds + excluded.wait_seconds
), used AS (
    INSERT INTO jobs_usagetally AS t (day, team_id, queue_id, username, {USAGE_COLUMNS})
    SELECT day, team_id, queue_id, username, {USAGE_SUMS}
      FROM ({usage_rows("folded", RUN_END)}) AS usage
     GROUP BY day, team_id, queue_id, username
     ORDER BY day, team_id, queue_id, username
        ON CONFLICT (day, team_id, queue_id, username) DO UPDATE
       SET attempts = t.attempts + excluded.attempts,
           succeeded = t.succeeded + excluded.succeeded,
           run_seconds = t.run_seconds + excluded.run_seconds,
           cpu_seconds = t.cpu_seconds + excluded.cpu_seconds,
           memory_mb_seconds = t.memory_mb_seconds + excluded.memory_mb_seconds,
           gpu_seconds = t.gpu_seconds + excluded.gpu_seconds
)
SELECT count(*) FROM folded
"""


# Schedule runs, by outcome and lateness bucket.
SCHEDULE_RUNS_FOLD_SQL = f"""
WITH {_take_batch("jobs_jobschedulerun", f"r.outcome, {LATENESS_SECONDS} AS late")}, added AS (
    INSERT INTO jobs_scheduleruntally AS t (outcome, bucket, runs, late_seconds)
    SELECT outcome, width_bucket(-late, %(fits)s::float8[]), count(*), sum(late)
      FROM folded
     GROUP BY 1, 2
     ORDER BY 1, 2
        ON CONFLICT (outcome, bucket) DO UPDATE
       SET runs = t.runs + excluded.runs,
           late_seconds = t.late_seconds + excluded.late_seconds
)
SELECT count(*) FROM folded
"""

# Retries, by their job's queue.
RETRIES_FOLD_SQL = f"""
WITH {_take_batch("jobs_jobretry", "r.job_id")}, added AS (
    INSERT INTO jobs_retrytally AS t (queue_id, retries)
    SELECT j.queue_id, count(*) FROM folded f JOIN jobs_job j ON j.id = f.job_id
     GROUP BY 1
     ORDER BY 1
        ON CONFLICT (queue_id) DO UPDATE SET retries = t.retries + excluded.retries
)
SELECT count(*) FROM folded
"""


def _folds(limit: int) -> dict[str, tuple[str, dict]]:
    """Each kind's fold statement and its parameters."""
    return {
        "executions": (
            EXECUTIONS_FOLD_SQL,
            {
                "ended": list(ENDED_EXECUTION_STATUSES),
                "limit": limit,
                "run_fits": bucket_fits(RUN_BUCKETS),
                "wait_fits": bucket_fits(WAIT_BUCKETS),
            },
        ),
        "schedule_runs": (
            SCHEDULE_RUNS_FOLD_SQL,
            {"limit": limit, "fits": bucket_fits(LATENESS_BUCKETS)},
        ),
        "retries": (RETRIES_FOLD_SQL, {"limit": limit}),
    }


def _fold_batch(sql: str, params: dict) -> int | None:
    """Fold one batch; how many rows were folded, or None when another fold holds the
    lock."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [TALLY_FOLD_LOCK_ID])
        if not cursor.fetchone()[0]:
            return None
        without_jit()
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


def metrics_tallies_fold(
    *, batch: int = TALLY_FOLD_BATCH, budget_seconds: float = 1.0
) -> dict[str, int]:
    """Fold what has not been folded into the metrics' tallies, a batch a transaction,
    each kind until none is left or `budget_seconds` have passed (the scheduler runs
    this between cycles). Another fold under way leaves the work to it."""
    folds = _folds(batch)
    folded = dict.fromkeys(folds, 0)
    deadline = time.monotonic() + budget_seconds
    for kind, (sql, params) in folds.items():
        while time.monotonic() < deadline:
            n = _fold_batch(sql, params)
            if n is None:
                return folded
            folded[kind] += n
            if n < batch:
                break
    return folded
