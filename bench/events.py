"""What events cost: the platform's throughput with every job writing its events, and
`GET /api/events/?job=` with a million events stored.

    .venv/bin/python bench/events.py [--events 1000000] [--requests 500] [--skip-throughput]

1. throughput: runs bench/throughput.py as it is (event recording is always on: each job
   writes submitted, placed, started and succeeded, the last three inside the statements
   of the placement, claim and success batch) and reports its ratio to bare Celery and
   its submit-to-start p99.
2. events query: its own database (scheduler_bench_events, Redis database 6) holding
   --events events bulk-loaded with SQL (10 per job, four teams, and node events without
   a team), gunicorn with 2 workers, and a team member sending
   `GET /api/events/?job=<one of their jobs>` --requests times, one after another.
3. log search: runs bench/log_search.py as it is (`GET /api/logs/?q=` over 100,000
   attempts' shipped logs) and reports its p99.

Each measurement is a function in MEASUREMENTS returning its figures; the last line
printed is one JSON object of them all.
"""

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.harness import Bench, http_get, percentile, stop, wait_for  # noqa: E402

PORT = 8766
EVENTS_PER_JOB = 10
TEAMS = 4


def _bench_script(name: str, *arguments: str) -> dict:
    """Runs another bench as it is (each sets its own environment up at import) and
    returns the figures of its last line, printing the rest indented."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / name), *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.strip().splitlines()
    print("\n".join(f"  {line}" for line in lines[:-1]), flush=True)
    return json.loads(lines[-1])


def throughput_with_events(args) -> dict:
    if args.skip_throughput:
        return {}
    figures = _bench_script("throughput.py", "--broker=redis")
    return {
        "throughput_ratio": figures["ratio"],
        "platform_jobs_per_second": figures["platform_jobs_per_second"],
        "submit_to_start_p99_ms": figures["submit_to_start_p99_ms"],
    }


def log_search(args) -> dict:
    """bench/log_search.py: `GET /api/logs/?q=` over 100,000 attempts' shipped logs."""
    return _bench_script("log_search.py")


# Events spread over 30 days, newest last; a job's ten events are consecutive, and every
# fourth team is someone else's. Node events (no team, no job) are one in fifty.
_FILL_SQL = """
INSERT INTO events_event (at, type, team_id, job_id, node_id, attempt, actor, message, data)
SELECT now() - interval '30 days' + n * (interval '30 days' / %(count)s),
       CASE WHEN n %% 50 = 49 THEN 'node.offline'
            ELSE (ARRAY['job.submitted', 'job.placed', 'job.started', 'job.attempt_failed',
                        'job.retry_planned'])[n %% 5 + 1] END,
       CASE WHEN n %% 50 = 49 THEN NULL
            ELSE (%(teams)s::bigint[])[(n / %(per_job)s) %% %(team_count)s + 1] END,
       CASE WHEN n %% 50 = 49 THEN NULL ELSE n / %(per_job)s + 1 END,
       %(node)s, 1, '', 'a bench event', '{"node": "bench-node"}'::jsonb
  FROM generate_series(0, %(count)s - 1) AS n
"""


def fill(count: int) -> tuple[str, list[int]]:
    """The events, and a member's token and their jobs' ids."""
    from django.db import connection

    from accounts.models import Role, Team, User
    from accounts.services import api_token_issue, team_add_member
    from nodes.models import Node

    teams = [Team.objects.create(name=f"Team {i}", slug=f"team-{i}") for i in range(TEAMS)]
    node = Node.objects.create(name="bench-node", cpu_millis=64000, memory_mb=65536)
    user = User.objects.create_user("bench")
    team_add_member(team=teams[0], user=user, role=Role.MEMBER)
    with connection.cursor() as cursor:
        cursor.execute(
            _FILL_SQL,
            {
                "count": count,
                "teams": [t.pk for t in teams],
                "team_count": TEAMS,
                "per_job": EVENTS_PER_JOB,
                "node": node.pk,
            },
        )
        cursor.execute("VACUUM ANALYZE events_event")
    jobs = count // EVENTS_PER_JOB
    mine = [j + 1 for j in range(jobs) if j % TEAMS == 0]
    return api_token_issue(user=user, name="bench").key, mine


def get(path: str, token: str) -> tuple[int, bytes]:
    return http_get(PORT, path, {"Authorization": f"Token {token}"})


def events_query(args) -> dict:
    bench = Bench("events", 6, API_THROTTLE_USER="", API_THROTTLE_TOKEN="", DB_CONN_MAX_AGE="60")
    bench.set_up()
    print(f"storing {args.events} events", flush=True)
    started = time.perf_counter()
    token, jobs = fill(args.events)
    print(f"  stored in {time.perf_counter() - started:.0f} s", flush=True)
    from django.db import connections

    connections.close_all()
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    web = bench.start(
        "web", [gunicorn, "scheduler_site.wsgi", f"--bind=127.0.0.1:{PORT}", "--workers=2"]
    )
    latencies = []
    try:

        def answers() -> bool:
            try:
                return get("/api/events/?page_size=1", token)[0] == 200
            except OSError:
                return False

        wait_for(answers, 60, "gunicorn", 0.2)
        rng = random.Random(14)
        for i in range(args.requests + 50):
            job = rng.choice(jobs)
            began = time.perf_counter()
            status, body = get(f"/api/events/?job={job}", token)
            elapsed = (time.perf_counter() - began) * 1000
            if status != 200:
                raise SystemExit(f"the API answered {status}: {body[:300]!r}")
            if not json.loads(body)["results"]:
                raise SystemExit(f"no events for job {job}")
            if i >= 50:  # the first ones warm both workers
                latencies.append(elapsed)
    finally:
        stop([web])
        bench.drop_database()
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(
        f"GET /api/events/?job= with {args.events} events, {len(latencies)} requests: "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(latencies):.1f} ms",
        flush=True,
    )
    return {"events_query_p50_ms": round(p50, 1), "events_query_p99_ms": round(p99, 1)}


MEASUREMENTS = [throughput_with_events, events_query, log_search]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    figures = {}
    for measure in MEASUREMENTS:
        figures |= measure(args)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
