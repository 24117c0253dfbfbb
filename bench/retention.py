"""How fast job retention (beat's `purge-jobs`, `jobs.services.retention`) deletes what
ended long ago, and what a purge leaves.

    .venv/bin/python bench/retention.py [--jobs 100000] [--chunks 2]

Sets up its own database (scheduler_bench_retention) holding --jobs ended jobs loaded
with SQL, each with an attempt, its released allocation and --chunks chunks of log: nine
in ten ended 100 days ago (one in a hundred of those a dead letter, which stays), the
rest yesterday; none yet counted by the metrics, as after a fresh start, so the purge
folds them first. Then it runs one purge with a retention of 90 days and times it. The
last line printed is one JSON object: `jobs_purged`, `purge_seconds`,
`jobs_purged_per_second`, `jobs_left`.
"""

import argparse
import json
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.harness import Bench  # noqa: E402

BENCH = Bench("retention", 6)


def fill(jobs: int, chunks: int) -> None:
    from django.db import connection

    from accounts.models import Team
    from nodes.models import Node
    from resources.models import DEFAULT_QUEUE_NAME, Queue

    team = Team.objects.create(name="Old", slug="old")
    queue = Queue.objects.get(name=DEFAULT_QUEUE_NAME)
    node = Node.objects.create(name="old-node", cpu_millis=64000, memory_mb=65536)
    params = {"team": team.pk, "queue": queue.pk, "node": node.pk, "n": jobs, "chunks": chunks}
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO jobs_job (team_id, queue_id, name, kind, command, callable, env,
                   parameters, cpu_millis, memory_mb, gpu, priority, max_retries,
                   retry_backoff_seconds, node_selector, status, pending_reason,
                   idempotency_key, attempts, created_at, started_at, finished_at)
            SELECT %(team)s, %(queue)s, 'nightly-' || i %% 50, 'command', '["true"]', '',
                   '{}', '{}', 1000, 256, 0, 0, 0, 10, '{}',
                   CASE WHEN i %% 100 = 7 THEN 'failed' ELSE 'succeeded' END, '', '', 1,
                   t, t, t + interval '1 second'
              FROM generate_series(1, %(n)s) i,
                   LATERAL (SELECT now() - CASE WHEN i %% 10 = 0 THEN interval '1 day'
                                                ELSE interval '100 days' END AS t) at
            """,
            params,
        )
        cursor.execute(
            """
            INSERT INTO jobs_jobexecution (job_id, attempt, node_id, token, status,
                   reserved_at, started_at, finished_at, error, log_path, log_tail)
            SELECT id, 1, %(node)s, 'job-' || id || '-attempt-1', status, created_at,
                   started_at, finished_at, '', '', ''
              FROM jobs_job
            """,
            params,
        )
        cursor.execute(
            "UPDATE jobs_job j SET last_execution_id = e.id FROM jobs_jobexecution e "
            "WHERE e.job_id = j.id"
        )
        cursor.execute(
            """
            INSERT INTO resources_allocation (execution_id, node_id, queue_id, team_id,
                   cpu_millis, memory_mb, gpu, status, created_at, released_at)
            SELECT id, %(node)s, %(queue)s, %(team)s, 1000, 256, 0, 'released', reserved_at,
                   finished_at
              FROM jobs_jobexecution
            """,
            params,
        )
        cursor.execute(
            """
            INSERT INTO jobs_joblogchunk (execution_id, seq, first_line, "offset", text,
                   created_at)
            SELECT e.id, s, 1 + s, 40 * s, 'line ' || s || ' of job ' || e.job_id || E'\n',
                   e.finished_at
              FROM jobs_jobexecution e, generate_series(0, %(chunks)s - 1) s
            """,
            params,
        )
        cursor.execute(
            "VACUUM ANALYZE jobs_job, jobs_jobexecution, jobs_joblogchunk, resources_allocation"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--chunks", type=int, default=2)
    args = parser.parse_args()

    BENCH.set_up()
    try:
        print(f"storing {args.jobs} ended jobs, {args.chunks} chunks of log each", flush=True)
        fill(args.jobs, args.chunks)
        from django.utils import timezone

        from jobs.models import Job
        from jobs.services.retention import jobs_purge

        began = time.perf_counter()
        purged = jobs_purge(before=timezone.now() - timedelta(days=90))
        seconds = time.perf_counter() - began
        left = Job.objects.count()
        print(f"purged {purged.jobs} jobs in {seconds:.1f} s; {left} left")
        figures = {
            "jobs_purged": purged.jobs,
            "purge_seconds": round(seconds, 2),
            "jobs_purged_per_second": round(purged.jobs / seconds, 1),
            "jobs_left": left,
        }
    finally:
        from django.db import connections

        connections.close_all()
        BENCH.drop_database()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
