"""Latency of the log search, `GET /api/logs/?q=`, under gunicorn, over stored logs.

    .venv/bin/python bench/log_search.py [--attempts 100000] [--chunks 4] [--requests 400]

Sets up its own database (scheduler_bench_logsearch) holding --attempts attempts' logs
(--chunks chunks of three lines each, as agents ship them; four in five of the member's
team), loaded with SQL, then starts gunicorn as scripts/up does and, as a team member
with a token, sends --requests searches one after another, a mix of what people look
for: a unique marker, an error code a few attempts printed, a common phrase within one
job, a rarer word over the last day within a team. The last line printed is one JSON
object: `log_search_p99_ms`.

`fill_logs` and `log_search_p99_ms` are for other benches: the first loads the logs
into the database Django is set up on, the second measures against a running server.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.harness import (  # noqa: E402
    Bench,
    gunicorn_argv,
    http_get,
    percentile,
    stop,
    wait_for,
)

PORT = 8766
BENCH = Bench("logsearch", 6, API_THROTTLE_USER="", API_THROTTLE_TOKEN="", DB_CONN_MAX_AGE="60")
MARKER = "MARKER-5d1e0c"
# One attempt in this many printed the error code.
ERROR_EVERY = 997


def fill_logs(attempts: int, chunks: int) -> dict:
    """The logs, a member's token, and what the searches look for."""
    from django.db import connection

    from accounts.models import Role, Team, User
    from accounts.services import api_token_issue, team_add_member
    from nodes.models import Node
    from resources.models import DEFAULT_QUEUE_NAME, Queue

    mine = Team.objects.create(name="Logs", slug="logs")
    theirs = Team.objects.create(name="Other logs", slug="other-logs")
    user = User.objects.create_user("log-reader")
    team_add_member(team=mine, user=user, role=Role.MEMBER)
    queue = Queue.objects.get(name=DEFAULT_QUEUE_NAME)
    node = Node.objects.create(name="log-node", cpu_millis=64000, memory_mb=65536)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO jobs_job (team_id, queue_id, name, kind, command, callable, env,
                   parameters, cpu_millis, memory_mb, gpu, priority, max_retries,
                   retry_backoff_seconds, node_selector, status, pending_reason,
                   idempotency_key, attempts, created_at)
            SELECT CASE WHEN i %% 5 = 4 THEN %(theirs)s ELSE %(mine)s END, %(queue)s,
                   'nightly-' || i %% 50, 'command', '["sh", "-c", "etl"]', '', '{}', '{}',
                   1000, 256, 0, 0, 0, 10, '{}', 'succeeded', '', '', 1,
                   now() - (%(n)s - i) * interval '10 seconds'
              FROM generate_series(1, %(n)s) i
            """,
            {"theirs": theirs.pk, "mine": mine.pk, "queue": queue.pk, "n": attempts},
        )
        cursor.execute(
            """
            INSERT INTO jobs_jobexecution (job_id, attempt, node_id, token, status,
                   reserved_at, error, log_path, log_tail)
            SELECT id, 1, %s, 'job-' || id || '-attempt-1', 'succeeded', created_at, '', '', ''
              FROM jobs_job
            """,
            [node.pk],
        )
        # Built once after the load rather than kept up row by row during it.
        cursor.execute("DROP INDEX log_chunk_text_trgm")
        cursor.execute(
            """
            INSERT INTO jobs_joblogchunk (execution_id, seq, first_line, "offset", text,
                   created_at)
            SELECT e.id, s, 1 + 3 * s, 150 * s,
                   'loading partition ' || (e.id * 31 + s) %% 1000 || ' of table events_'
                   || e.job_id %% 97 || E'\n'
                   || 'rows read ' || e.id * 7 + s || ', rows written ' || e.id * 5 + s
                   || ' in ' || (e.id + s) %% 900 || E' ms\n'
                   || CASE WHEN s = 1 AND e.id %% %(error_every)s = 0
                           THEN 'ERROR E4711 upstream timed out after 30 s'
                           WHEN s = 1 AND e.id = %(marked)s THEN 'checksum ' || %(marker)s
                           ELSE 'checkpoint ' || md5(e.id::text || s) END || E'\n',
                   e.reserved_at + s * interval '1 second'
              FROM jobs_jobexecution e, generate_series(0, %(chunks)s - 1) s
            """,
            {
                "chunks": chunks,
                "error_every": ERROR_EVERY,
                "marked": attempts // 2 + 1,
                "marker": MARKER,
            },
        )
        cursor.execute(
            "CREATE INDEX log_chunk_text_trgm ON jobs_joblogchunk USING gin (text gin_trgm_ops)"
        )
        cursor.execute("VACUUM ANALYZE jobs_job, jobs_jobexecution, jobs_joblogchunk")
        cursor.execute("SELECT max(id) FROM jobs_job WHERE team_id = %s", [mine.pk])
        (a_job,) = cursor.fetchone()
    return {"token": api_token_issue(user=user, name="bench").key, "job": a_job}


def searches(world: dict) -> list[str]:
    day_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 86400))
    return [
        "/api/logs/?" + urlencode(query)
        for query in (
            {"q": MARKER},
            {"q": "E4711"},
            {"q": "rows read", "job": world["job"]},
            {"q": "upstream timed out", "team": "logs", "since": day_ago},
        )
    ]


def get(port: int, path: str, token: str) -> tuple[int, bytes]:
    return http_get(port, path, {"Authorization": f"Token {token}"})


def log_search_p99_ms(*, port: int, world: dict, requests: int) -> dict:
    """Sends the searches one after another, round robin, against a running server."""
    paths = searches(world)
    for path in paths:  # warm the caches
        get(port, path, world["token"])
    latencies: list[float] = []
    for i in range(requests):
        began = time.perf_counter()
        status, body = get(port, paths[i % len(paths)], world["token"])
        latencies.append((time.perf_counter() - began) * 1000)
        if status != 200:
            raise SystemExit(f"the API answered {status}: {body[:300]!r}")
    found = json.loads(get(port, paths[0], world["token"])[1])["results"]
    if [r["text"] for r in found] != [f"checksum {MARKER}"]:
        raise SystemExit(f"the marker was not found: {found}")
    for path in paths:
        p = [lat for i, lat in enumerate(latencies) if paths[i % len(paths)] == path]
        print(
            f"  {path[:70]:70} p50 {percentile(p, 0.5):7.1f} ms  p99 {percentile(p, 0.99):7.1f} ms"
        )
    print(
        f"{len(latencies)} searches: p50 {percentile(latencies, 0.5):.1f} ms, "
        f"p99 {percentile(latencies, 0.99):.1f} ms, mean {statistics.mean(latencies):.1f} ms"
    )
    return {"log_search_p99_ms": round(percentile(latencies, 0.99), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=100_000)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()

    BENCH.set_up()
    print(f"storing {args.attempts} attempts' logs, {args.chunks} chunks each", flush=True)
    world = fill_logs(args.attempts, args.chunks)
    from django.db import connections

    connections.close_all()
    web = BENCH.start("web", gunicorn_argv(PORT))
    try:
        wait_for(lambda: _answers(world["token"]), 60, "gunicorn", 0.2)
        figures = log_search_p99_ms(port=PORT, world=world, requests=args.requests)
    finally:
        stop([web])
        BENCH.drop_database()
    print(json.dumps(figures))


def _answers(token: str) -> bool:
    try:
        return get(PORT, "/api/logs/?q=warmup", token)[0] == 200
    except OSError:
        return False


if __name__ == "__main__":
    main()
