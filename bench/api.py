"""Latency and throughput of the jobs list under gunicorn, with 100,000 jobs stored.

    .venv/bin/python bench/api.py [--jobs 100000] [--rate 50] [--seconds 30] [--clients 4]

Sets up its own database (scheduler_bench_api) holding --jobs jobs of two teams (four
in five of the member's team; most succeeded, each finished one with its execution),
starts gunicorn with 2 workers as scripts/up does, with throttling off, and as a team
member with a token:

1. sends `GET /api/jobs/?status=succeeded` at a steady --rate for --seconds from a pool
   of threads (every other request the second page, by its cursor), and measures each
   request's latency from the moment it was due, so a server falling behind shows;
2. then sends them back to back from --clients threads for 10 s, for the most it serves.

The last line printed is one JSON object of the figures.
"""

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.harness import Bench, percentile, stop, wait_for  # noqa: E402

PORT = 8765
PATH = "/api/jobs/?status=succeeded"
BENCH = Bench("api", 9, API_THROTTLE_USER="", API_THROTTLE_TOKEN="", DB_CONN_MAX_AGE="60")


def fill(jobs: int) -> str:
    """The jobs, and a team member's token."""
    from django.db import connection
    from django.utils import timezone

    from accounts.models import Role, Team, User
    from accounts.services import api_token_issue, team_add_member
    from jobs.models import ExecutionStatus, Job, JobExecution, JobStatus
    from nodes.models import Node
    from resources.models import DEFAULT_QUEUE_NAME, Queue

    mine = Team.objects.create(name="Bench", slug="bench")
    theirs = Team.objects.create(name="Other", slug="other")
    user = User.objects.create_user("bench")
    team_add_member(team=mine, user=user, role=Role.MEMBER)
    queue = Queue.objects.get(name=DEFAULT_QUEUE_NAME)
    node = Node.objects.create(name="bench-node", cpu_millis=64000, memory_mb=65536)
    statuses = [JobStatus.SUCCEEDED] * 14 + [JobStatus.FAILED] * 3 + [JobStatus.CANCELLED] * 2
    statuses.append(JobStatus.PENDING)
    start = timezone.now() - timedelta(days=30)
    batch = 10_000
    for first in range(0, jobs, batch):
        rows = []
        for i in range(first, min(first + batch, jobs)):
            status = statuses[i % len(statuses)]
            created = start + timedelta(seconds=i * 20)
            finished = status != JobStatus.PENDING
            rows.append(
                Job(
                    team=theirs if i % 5 == 4 else mine,
                    queue=queue,
                    name=f"nightly-{i % 50}",
                    command=["sh", "-c", "echo report"],
                    status=status,
                    attempts=1 if finished else 0,
                    created_at=created,
                    started_at=created + timedelta(seconds=1) if finished else None,
                    finished_at=created + timedelta(seconds=5) if finished else None,
                )
            )
        created_jobs = Job.objects.bulk_create(rows)
        JobExecution.objects.bulk_create(
            JobExecution(
                job=job,
                attempt=1,
                node=node,
                token=f"job-{job.pk}-attempt-1",
                status=ExecutionStatus(job.status),
                exit_code=0 if job.status == JobStatus.SUCCEEDED else 1,
                reserved_at=job.created_at,
                started_at=job.started_at,
                finished_at=job.finished_at,
                log_tail="report\n",
            )
            for job in created_jobs
            if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
        )
        print(f"  {min(first + batch, jobs)} jobs", flush=True)
    # auto_now_add set created_at on insert; put back the spread-out history.
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE jobs_job SET created_at = %s + (id - (SELECT min(id) FROM jobs_job))"
            " * interval '20 seconds'",
            [start],
        )
        cursor.execute(
            "UPDATE jobs_job j SET last_execution_id = e.id"
            " FROM jobs_jobexecution e WHERE e.job_id = j.id"
        )
        cursor.execute("VACUUM ANALYZE jobs_job")
        cursor.execute("VACUUM ANALYZE jobs_jobexecution")
    return api_token_issue(user=user, name="bench").key


def get(path: str, token: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    try:
        connection.request("GET", path, headers={"Authorization": f"Token {token}"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def check(status: int, body: bytes) -> dict:
    if status != 200:
        raise SystemExit(f"the API answered {status}: {body[:300]!r}")
    return json.loads(body)


def steady(token: str, paths: list[str], rate: float, seconds: float) -> tuple[list[float], float]:
    """Requests due at `rate` per second; latency from each one's due time."""
    latencies: list[float] = []
    lock = threading.Lock()

    def one(due: float, path: str) -> None:
        while (delay := due - time.perf_counter()) > 0:
            time.sleep(delay)
        check(*get(path, token))
        with lock:
            latencies.append((time.perf_counter() - due) * 1000)

    count = int(rate * seconds)
    began = time.perf_counter() + 0.2
    with ThreadPoolExecutor(32) as pool:
        for i in range(count):
            pool.submit(one, began + i / rate, paths[i % len(paths)])
    return latencies, count / (time.perf_counter() - began)


def flat_out(token: str, paths: list[str], clients: int, seconds: float) -> float:
    done = []
    deadline = time.perf_counter() + seconds

    def client() -> None:
        n = 0
        while time.perf_counter() < deadline:
            check(*get(paths[n % len(paths)], token))
            n += 1
        done.append(n)

    began = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()

    BENCH.set_up()
    print(f"storing {args.jobs} jobs", flush=True)
    token = fill(args.jobs)
    from django.db import connections

    connections.close_all()
    web = BENCH.start(
        "web",
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "scheduler_site.wsgi",
            f"--bind=127.0.0.1:{PORT}",
            "--workers=2",
        ],
    )
    try:
        wait_for(lambda: _answers(token), 60, "gunicorn", 0.2)
        first = check(*get(PATH, token))
        assert len(first["results"]) == 50, first
        second = urlsplit(first["next"])
        paths = [PATH, f"{second.path}?{second.query}"]
        for _ in range(40):  # warm both workers
            check(*get(paths[0], token))
        print(f"steady {args.rate:g} requests/s for {args.seconds:g} s", flush=True)
        latencies, achieved = steady(token, paths, args.rate, args.seconds)
        print(f"back to back from {args.clients} clients for 10 s", flush=True)
        most = flat_out(token, paths, args.clients, 10)
    finally:
        stop([web])
        BENCH.drop_database()
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(
        f"{len(latencies)} requests at {achieved:.1f}/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"mean {statistics.mean(latencies):.1f} ms, max {max(latencies):.1f} ms; "
        f"back to back: {most:.1f} requests/s"
    )
    print(
        json.dumps(
            {
                "p50_ms": round(p50, 1),
                "p99_ms": round(p99, 1),
                "requests_per_second": round(achieved, 1),
                "max_requests_per_second": round(most, 1),
                "jobs": args.jobs,
                "offered_rate": args.rate,
            }
        )
    )


def _answers(token: str) -> bool:
    try:
        return get(PATH, token)[0] == 200
    except OSError:
        return False


if __name__ == "__main__":
    main()
