"""Concurrency limits at placement: how many more jobs of each (team, key) may start.

A placer (the scheduling cycle, or a finish filling its freed room) locks the limit rows
of the keys it is about to place, then counts the jobs that hold their slots. The lock
comes first and the count is a statement of its own, so a second placer waiting for the
lock counts, once it has it, what the first one placed and committed.
"""

from collections.abc import Iterable

from common.db import prepared_cursor

from ..models import ACTIVE_JOB_STATUSES

# In id order, so two placers locking overlapping keys cannot deadlock.
LOCK_LIMITS_SQL = """
SELECT l.id, l.team_id, l.key, l.max_running
  FROM jobs_concurrencylimit l
  JOIN unnest(%(teams)s::bigint[], %(keys)s::text[]) AS wanted(team_id, key)
    ON wanted.team_id = l.team_id AND wanted.key = l.key
 ORDER BY l.id
   FOR UPDATE OF l
"""
# Served by the job_active_by_concurrency_key index. An array job holds no slot itself:
# its tasks do.
ACTIVE_BY_KEY_SQL = """
SELECT j.team_id, j.concurrency_key, count(*)
  FROM jobs_job j
  JOIN unnest(%(teams)s::bigint[], %(keys)s::text[]) AS wanted(team_id, key)
    ON wanted.team_id = j.team_id AND wanted.key = j.concurrency_key
 WHERE j.status = ANY(%(active)s::text[]) AND j.concurrency_key <> ''
   AND j.array_count IS NULL
 GROUP BY j.team_id, j.concurrency_key
"""


def concurrency_slots_lock(keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], int]:
    """Lock the limits of these (team id, key) pairs until the transaction ends, and
    return how many more jobs each may start; a pair with no limit is left out (it has
    none). No statement at all for no keys."""
    keys = sorted(keys)
    if not keys:
        return {}
    with prepared_cursor() as cursor:
        wanted = {"teams": [t for t, _ in keys], "keys": [k for _, k in keys]}
        cursor.execute(LOCK_LIMITS_SQL, wanted)
        limits = {(team, key): most for _, team, key, most in cursor.fetchall()}
        if not limits:
            return {}
        cursor.execute(
            ACTIVE_BY_KEY_SQL,
            {
                "teams": [t for t, _ in limits],
                "keys": [k for _, k in limits],
                "active": list(ACTIVE_JOB_STATUSES),
            },
        )
        active = {(team, key): n for team, key, n in cursor.fetchall()}
    return {pair: max(most - active.get(pair, 0), 0) for pair, most in limits.items()}
