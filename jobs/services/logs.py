"""Attempts' logs in the database: the chunks node agents ship while their jobs run, the
oldest ones cut when an attempt passes its cap, and the purge of expired ones."""

from dataclasses import dataclass
from datetime import datetime

from django.db import transaction

from common.db import prepared_cursor

# Chunks of executions that are gone (their job deleted) are dropped, not refused: one
# of them must not fail the batch that carries everyone else's output. A chunk sent
# again after a lost answer is already there, and changes nothing.
APPEND_SQL = """
INSERT INTO jobs_joblogchunk (execution_id, seq, first_line, "offset", text)
SELECT c.execution_id, c.seq, c.first_line, c.byte_offset, c.text
  FROM unnest(%(execution_ids)s::bigint[], %(seqs)s::int[], %(first_lines)s::int[],
              %(offsets)s::bigint[], %(texts)s::text[])
       AS c(execution_id, seq, first_line, byte_offset, text)
 WHERE EXISTS (SELECT 1 FROM jobs_jobexecution e WHERE e.id = c.execution_id)
ON CONFLICT (execution_id, seq) DO NOTHING
"""
CUT_SQL = """
DELETE FROM jobs_joblogchunk c
 USING unnest(%(execution_ids)s::bigint[], %(below)s::int[]) AS cut(execution_id, below)
 WHERE c.execution_id = cut.execution_id AND c.seq < cut.below
"""
# In slices, so a purge of a busy cluster's month never holds one huge transaction.
PURGE_SQL = """
DELETE FROM jobs_joblogchunk
 WHERE id IN (SELECT id FROM jobs_joblogchunk WHERE created_at < %(before)s LIMIT %(limit)s)
"""
PURGE_SLICE = 10_000


@dataclass(frozen=True)
class LogChunk:
    """A piece of an attempt's output: whole lines but for the attempt's last (or a line
    too long to wait for its end)."""

    execution_id: int
    seq: int
    first_line: int
    offset: int
    text: str


def log_chunks_append(*, chunks: list[LogChunk], cuts: dict[int, int]) -> None:
    """Store the chunks of several attempts, and delete each attempt's chunks below the
    seq `cuts` gives it (its cap's doing), in one transaction of two statements."""
    with transaction.atomic(), prepared_cursor() as cursor:
        # Not waiting for the WAL flush: a crash of PostgreSQL may lose the last moments
        # of output, never more, and a later commit (the attempt's end) flushes them.
        cursor.execute("SET LOCAL synchronous_commit TO OFF")
        if chunks:
            cursor.execute(
                APPEND_SQL,
                {
                    "execution_ids": [c.execution_id for c in chunks],
                    "seqs": [c.seq for c in chunks],
                    "first_lines": [c.first_line for c in chunks],
                    "offsets": [c.offset for c in chunks],
                    "texts": [c.text for c in chunks],
                },
            )
        if cuts:
            cursor.execute(CUT_SQL, {"execution_ids": list(cuts), "below": list(cuts.values())})


def log_chunks_purge(*, before: datetime) -> int:
    """Delete the chunks shipped before `before`; returns how many went."""
    deleted = 0
    while True:
        with prepared_cursor() as cursor:
            cursor.execute(PURGE_SQL, {"before": before, "limit": PURGE_SLICE})
            deleted += cursor.rowcount
            if cursor.rowcount < PURGE_SLICE:
                return deleted
