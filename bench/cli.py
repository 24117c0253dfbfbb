"""`sched queue` with 10,000 jobs waiting: the wall time of the command's first page.

    .venv/bin/python bench/cli.py [--jobs 10000] [--runs 20]

Sets up its own database (scheduler_bench_cli) holding --jobs pending jobs of a team
(bulk inserts; reasons mixed, as a busy cluster has them) and a few running ones,
starts gunicorn with 2 workers as scripts/up does, and runs the installed `sched queue`
--runs times as a team member (SCHED_URL, SCHED_TOKEN), each a new process: the figure
is what a person waits for, start-up included. Beside it, `sched --version` (the
command's start-up alone), the API's own pages (`GET /api/jobs/?status=...`), and a bare
`python -c pass`, which shows how busy the machine was.

The last line printed is one JSON object of the figures.
"""

import argparse
import json
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.harness import Bench, gunicorn_argv, http_get, percentile, stop, wait_for  # noqa: E402

PORT = 8767
SCHED = str(Path(sys.executable).parent / "sched")
BENCH = Bench("cli", 4, API_THROTTLE_USER="", API_THROTTLE_TOKEN="", DB_CONN_MAX_AGE="60")


def fill(jobs: int) -> str:
    """The pending jobs, a few running ones, and a team member's token."""
    from django.db import connection
    from django.utils import timezone

    from accounts.models import Role, Team, User
    from accounts.services import api_token_issue, team_add_member
    from jobs.models import Job, JobStatus, PendingReason
    from resources.models import DEFAULT_QUEUE_NAME, Queue

    team = Team.objects.create(name="Bench", slug="bench")
    user = User.objects.create_user("bench")
    team_add_member(team=team, user=user, role=Role.MEMBER)
    queue = Queue.objects.get(name=DEFAULT_QUEUE_NAME)
    reasons = [
        PendingReason.INSUFFICIENT_CAPACITY,
        PendingReason.QUEUE_QUOTA,
        PendingReason.NODE_SELECTOR,
        PendingReason.NONE,
    ]
    Job.objects.bulk_create(
        [
            Job(
                team=team,
                queue=queue,
                submitted_by=user,
                name=f"sweep-{i % 100}",
                command=["python", "train.py", f"--seed={i}"],
                status=JobStatus.PENDING,
                pending_reason=reasons[i % len(reasons)],
                priority=i % 7,
            )
            for i in range(jobs)
        ],
        batch_size=2000,
    )
    start = timezone.now() - timedelta(hours=6)
    with connection.cursor() as cursor:
        # auto_now_add gave them all one time; spread them over the last six hours.
        cursor.execute(
            "UPDATE jobs_job SET created_at = %s + (id - (SELECT min(id) FROM jobs_job))"
            " * interval '2 seconds'",
            [start],
        )
        cursor.execute("VACUUM ANALYZE jobs_job")
    return api_token_issue(user=user, name="bench").key


def timed(argv: list[str], env: dict) -> tuple[float, str]:
    began = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    took = (time.perf_counter() - began) * 1000
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
    return took, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    BENCH.set_up()
    print(f"storing {args.jobs} pending jobs", flush=True)
    token = fill(args.jobs)
    from django.db import connections

    connections.close_all()
    headers = {"Authorization": f"Token {token}"}
    env = {**BENCH.env, "SCHED_URL": f"http://127.0.0.1:{PORT}", "SCHED_TOKEN": token}
    web = BENCH.start("web", gunicorn_argv(PORT))
    try:
        wait_for(lambda: _answers(headers), 60, "gunicorn", 0.2)
        for _ in range(10):  # warm both workers
            http_get(PORT, "/api/jobs/?status=pending", headers)
        queue_ms, startup_ms, json_ms, api_ms, python_ms = [], [], [], [], []
        for _ in range(args.runs):
            took, out = timed([SCHED, "queue"], env)
            queue_ms.append(took)
            took, listed = timed([SCHED, "queue", "--json"], env)
            json_ms.append(took)
            startup_ms.append(timed([SCHED, "--version"], env)[0])
            python_ms.append(timed([sys.executable, "-c", "pass"], env)[0])
            began = time.perf_counter()
            for status in ("pending", "reserved", "running"):
                http_get(PORT, f"/api/jobs/?status={status}&page_size=50", headers)
            api_ms.append((time.perf_counter() - began) * 1000)
        rows = out.splitlines()[1:]
        assert len(rows) == 50 and len(json.loads(listed)) == 50, (len(rows), out[:500])
    finally:
        stop([web])
        BENCH.drop_database()
    figures = {
        "queue_first_page_ms": round(percentile(queue_ms, 0.5), 1),
        "queue_first_page_p90_ms": round(percentile(queue_ms, 0.9), 1),
        "queue_json_ms": round(percentile(json_ms, 0.5), 1),
        "startup_ms": round(percentile(startup_ms, 0.5), 1),
        "api_three_pages_ms": round(percentile(api_ms, 0.5), 1),
        "python_startup_ms": round(percentile(python_ms, 0.5), 1),
        "jobs": args.jobs,
        "runs": args.runs,
    }
    print(
        f"sched queue (first page of 50 of {args.jobs} pending jobs), median of {args.runs} "
        f"runs: {figures['queue_first_page_ms']} ms (p90 {figures['queue_first_page_p90_ms']} "
        f"ms; --json {figures['queue_json_ms']} ms). Of it, the command's start-up: "
        f"{figures['startup_ms']} ms; the API's three pages (pending, reserved, running): "
        f"{figures['api_three_pages_ms']} ms; a bare Python's start-up on this machine now: "
        f"{figures['python_startup_ms']} ms"
    )
    print(json.dumps(figures))


def _answers(headers: dict) -> bool:
    try:
        return http_get(PORT, "/api/jobs/?page_size=1", headers)[0] == 200
    except OSError:
        return False


if __name__ == "__main__":
    main()
