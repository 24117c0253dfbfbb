"""An array job's slots: at most `array_parallelism` of its tasks are candidates for
placement (pending and not held, placed, or running) at once; the others wait held with
the reason `waiting_array_slot`, and no scheduling cycle looks at them.

`array_slots_release` runs in the transaction of whatever may free a slot (a task's
finish, a cancel, a change of parallelism, a retry): it releases the next held tasks in
index order and, once every task has ended, ends the array job. The array job's row is
locked first, so two finishes of one array count each other's releases; the held tasks
are taken with SKIP LOCKED, so a release never waits for a task a cancel is ending.
"""

import logging
from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone

from common.db import prepared_cursor
from common.wakeup import scheduler_wake

from ..models import TERMINAL_JOB_STATUSES, JobStatus, PendingReason

logger = logging.getLogger(__name__)

LOCK_ARRAYS_SQL = """
SELECT id FROM jobs_job WHERE id = ANY(%(arrays)s::bigint[]) AND array_count IS NOT NULL
 ORDER BY id FOR UPDATE
"""
# For each array with no cancel asked and not held by a person: its free slots
# (parallelism less the tasks that are candidates, placed or running), filled by its
# tasks waiting for a slot, in index order.
RELEASE_SQL = """
WITH array_job AS (
    SELECT p.id, p.array_parallelism - (
               SELECT count(*) FROM jobs_job t
                WHERE t.array_parent_id = p.id AND t.status = ANY(%(live)s::text[])
                  AND t.pending_reason <> %(held)s) AS free
      FROM jobs_job p
     WHERE p.id = ANY(%(arrays)s::bigint[]) AND p.cancel_requested_at IS NULL
       AND p.held_at IS NULL
), released AS (
    SELECT task.id FROM array_job CROSS JOIN LATERAL (
        SELECT t.id FROM jobs_job t
         WHERE t.array_parent_id = array_job.id AND t.status = %(pending)s
           AND t.pending_reason = %(held)s
         ORDER BY t.array_index
         LIMIT greatest(array_job.free, 0)
           FOR UPDATE SKIP LOCKED
    ) task
)
UPDATE jobs_job j SET pending_reason = '' FROM released WHERE j.id = released.id
RETURNING j.id
"""
# Arrays all of whose tasks have ended end too: failed if a task failed, else cancelled
# if a task was cancelled (or a cancel was asked), else succeeded.
END_SQL = """
WITH tasks AS (
    SELECT t.array_parent_id AS id,
           count(*) FILTER (WHERE t.status <> ALL(%(terminal)s::text[])) AS live,
           count(*) FILTER (WHERE t.status = %(failed)s) AS failed,
           count(*) FILTER (WHERE t.status = %(cancelled)s) AS cancelled
      FROM jobs_job t WHERE t.array_parent_id = ANY(%(arrays)s::bigint[])
     GROUP BY t.array_parent_id
)
UPDATE jobs_job p
   SET status = CASE WHEN tasks.failed > 0 THEN %(failed)s
                     WHEN tasks.cancelled > 0 OR p.cancel_requested_at IS NOT NULL
                     THEN %(cancelled)s
                     ELSE %(succeeded)s END,
       finished_at = %(now)s, pending_reason = ''
  FROM tasks
 WHERE p.id = tasks.id AND tasks.live = 0 AND p.status <> ALL(%(terminal)s::text[])
RETURNING p.id, p.status
"""


def array_slots_release(*, array_ids: Iterable[int]) -> list[int]:
    """Release the held tasks that fit these arrays' free slots, and end the arrays whose
    tasks have all ended; in the caller's transaction. Returns the released tasks' ids."""
    arrays = sorted(set(array_ids))
    if not arrays:
        return []
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("array_slots_release must run inside the freeing transaction")
    with prepared_cursor() as cursor:
        cursor.execute(LOCK_ARRAYS_SQL, {"arrays": arrays})
        arrays = [row[0] for row in cursor.fetchall()]
        if not arrays:
            return []
        cursor.execute(
            RELEASE_SQL,
            {
                "arrays": arrays,
                "live": [JobStatus.PENDING, JobStatus.RESERVED, JobStatus.RUNNING],
                "pending": JobStatus.PENDING,
                "held": PendingReason.WAITING_ARRAY_SLOT,
            },
        )
        released = [row[0] for row in cursor.fetchall()]
        cursor.execute(
            END_SQL,
            {
                "arrays": arrays,
                "terminal": list(TERMINAL_JOB_STATUSES),
                "failed": JobStatus.FAILED,
                "cancelled": JobStatus.CANCELLED,
                "succeeded": JobStatus.SUCCEEDED,
                "now": timezone.now(),
            },
        )
        ended = cursor.fetchall()
    if released:
        scheduler_wake()
        logger.info("array slots released arrays=%s tasks=%s", arrays, released)
    for array_id, status in ended:
        logger.info("array job ended job=%s status=%s", array_id, status)
    return released


def array_task_ended(job) -> None:
    """After a task of an array ended (locked and saved by the caller): its slot frees.
    Callers run it last in their transaction, after the node rows (which finishes lock
    before the array's row), so every path takes its locks in one order."""
    if job.array_parent_id is not None and job.status in TERMINAL_JOB_STATUSES:
        array_slots_release(array_ids=[job.array_parent_id])
