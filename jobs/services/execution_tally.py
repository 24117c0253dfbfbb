"""The metrics' figures of ended executions, folded into per-queue tallies so that a
scrape need not read the whole history.

An execution that has ended never changes what it counts for (its queue, outcome, run
time and, on a job's first attempt that started, the job's wait), so it can be counted
once and for all: `executions_tally_fold` adds a batch of ended executions to
`ExecutionTally` and marks them `metrics_folded`, in one statement. A scrape reads the
tallies and the executions not yet folded (the live ones and the recently ended) in one
statement too, so it sees every execution exactly once, before or after a fold.

The tallies keep bucket numbers, not seconds: changing RUN_BUCKETS or WAIT_BUCKETS
takes a migration that empties `ExecutionTally` and clears `metrics_folded`.
"""

import time
from collections.abc import Sequence

from django.db import connection, transaction

from ..models import ExecutionStatus

# Seconds. A job waits milliseconds on free room, and hours in a backlog.
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
RUN_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400)

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

# A batch of ended executions not yet folded, in id order, skipping any that another
# transaction holds; marked folded and added to the tallies (a data-modifying WITH runs
# whether or not the statement reads it), grouped as the scrape groups them: by queue,
# status and run bucket (bucket -1: it did not run), and by queue and wait bucket (only
# executions that carry their job's wait). OFFSET 0 keeps the subquery whole, so each
# row's times are worked out once, not once per use.
FOLD_SQL = f"""
WITH batch AS (
    SELECT id FROM jobs_jobexecution
     WHERE NOT metrics_folded AND status = ANY(%(ended)s::text[])
     ORDER BY id LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), folded AS (
    UPDATE jobs_jobexecution e SET metrics_folded = true
      FROM batch WHERE e.id = batch.id
    RETURNING e.id, e.job_id, e.attempt, e.status, e.started_at, e.finished_at
), tallies AS (
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
)
SELECT count(*) FROM folded
"""


def _fold_batch(limit: int) -> int:
    """Fold up to `limit` ended executions; how many were folded (0 when another fold
    holds the lock)."""
    params = {
        "ended": list(ENDED_EXECUTION_STATUSES),
        "limit": limit,
        "run_fits": bucket_fits(RUN_BUCKETS),
        "wait_fits": bucket_fits(WAIT_BUCKETS),
    }
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [TALLY_FOLD_LOCK_ID])
        if not cursor.fetchone()[0]:
            return 0
        cursor.execute(FOLD_SQL, params)
        return cursor.fetchone()[0]


def executions_tally_fold(
    *, batch: int = TALLY_FOLD_BATCH, budget_seconds: float = 1.0
) -> dict[str, int]:
    """Fold ended executions into the metrics' tallies, a batch a transaction, until none
    is left or `budget_seconds` have passed (the scheduler runs this between cycles)."""
    folded = 0
    deadline = time.monotonic() + budget_seconds
    while True:
        n = _fold_batch(batch)
        folded += n
        if n < batch or time.monotonic() >= deadline:
            return {"folded": folded}
