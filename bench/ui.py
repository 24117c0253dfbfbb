"""Server time of the web UI's pages with 100,000 jobs and 100 nodes.

Stores 100,000 jobs of two teams (85 % succeeded, failed, cancelled, pending in every
reason, running ones with their allocations on 100 nodes), their attempts, three events
and a log chunk per attempt, in its own database (`scheduler_bench_ui`); starts gunicorn
as `scripts/up` does and, logged in as a member of one team (a session cookie, as a
browser), requests back to back the overview, the jobs list (unfiltered, filtered by
status and by queue, and an older page by cursor), job pages, and `/api/jobs/{id}/why/`
of pending jobs. Prints each page's p50 and p99 and, last, one JSON line with
`overview_p99_ms`, `jobs_p99_ms`, `job_p99_ms`, `why_p99_ms`.
"""

import argparse
import json
import random
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Bench, gunicorn_argv, http_get, percentile, stop, wait_for

BENCH = Bench("ui", 4, API_THROTTLE_USER="", API_THROTTLE_TOKEN="", DB_CONN_MAX_AGE="60")
SPACING_SECONDS = 20
REASONS = ("insufficient_capacity", "queue_quota", "node_selector", "")


def fill(jobs: int, nodes: int) -> tuple[str, list[int], list[int]]:
    """The cluster; returns a member's session key, some of the team's job ids, and some
    of its pending job ids."""
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from accounts.models import Role, Team, User
    from accounts.services import team_add_member
    from jobs.models import ExecutionStatus, Job, JobExecution, JobStatus
    from nodes.models import Node
    from resources.models import DEFAULT_QUEUE_NAME, Allocation, Queue

    rng = random.Random(15)
    mine = Team.objects.create(name="Bench", slug="bench")
    theirs = Team.objects.create(name="Other", slug="other")
    user = User.objects.create_user("bench-member")
    team_add_member(team=mine, user=user, role=Role.MEMBER)
    queues = [Queue.objects.get(name=DEFAULT_QUEUE_NAME)] + [
        Queue.objects.create(name=f"q{i}", all_teams=True, quota_cpu_millis=32000 * (i + 1))
        for i in range(3)
    ]
    now = timezone.now()
    node_rows = Node.objects.bulk_create(
        Node(
            name=f"node-{i:03d}",
            cpu_millis=32000,
            memory_mb=65536,
            labels={"zone": "abc"[i % 3]},
            last_heartbeat=now,
            used_cpu_millis=rng.randrange(0, 4000),
            used_memory_mb=rng.randrange(0, 16000),
        )
        for i in range(nodes)
    )
    mix = (
        [JobStatus.SUCCEEDED] * 85
        + [JobStatus.FAILED] * 6
        + [JobStatus.CANCELLED] * 3
        + [JobStatus.PENDING] * 4
        + [JobStatus.RUNNING] * 2
    )
    start = now - timedelta(seconds=jobs * SPACING_SECONDS)
    running = 0
    batch = 10_000
    for first in range(0, jobs, batch):
        rows = []
        for i in range(first, min(first + batch, jobs)):
            status = mix[i % len(mix)]
            ended = status not in (JobStatus.PENDING, JobStatus.RUNNING)
            created = start + timedelta(seconds=i * SPACING_SECONDS)
            rows.append(
                Job(
                    team=theirs if i % 5 == 4 else mine,
                    queue=queues[i % len(queues)],
                    name=f"report-{i % 50}",
                    command=["sh", "-c", "echo report"],
                    status=status,
                    pending_reason=REASONS[i % len(REASONS)] if status == "pending" else "",
                    attempts=0 if status == JobStatus.PENDING else 1,
                    started_at=None if status == JobStatus.PENDING else created,
                    finished_at=created + timedelta(seconds=30) if ended else None,
                )
            )
        created_jobs = Job.objects.bulk_create(rows)
        executions = []
        for job in created_jobs:
            if job.status == JobStatus.PENDING:
                continue
            live = job.status == JobStatus.RUNNING
            node = node_rows[running % nodes if live else job.pk % nodes]
            running += live
            executions.append(
                JobExecution(
                    job=job,
                    attempt=1,
                    node=node,
                    token=f"job-{job.pk}-attempt-1",
                    status=ExecutionStatus(job.status),
                    exit_code=None if live else 0 if job.status == JobStatus.SUCCEEDED else 1,
                    reserved_at=job.started_at,
                    started_at=job.started_at,
                    finished_at=job.finished_at,
                    log_tail="report\n",
                )
            )
        JobExecution.objects.bulk_create(executions)
        Allocation.objects.bulk_create(
            Allocation(
                execution=e,
                node=e.node,
                queue_id=e.job.queue_id,
                team_id=e.job.team_id,
                cpu_millis=1000,
                memory_mb=1024,
                status="active",
                activated_at=e.started_at,
            )
            for e in executions
            if e.status == ExecutionStatus.RUNNING
        )
        print(f"  {min(first + batch, jobs)} jobs", flush=True)
    with connection.cursor() as cursor:
        # auto_now_add set created_at on insert; put back the spread-out history.
        cursor.execute(
            "UPDATE jobs_job SET created_at = %s + (id - (SELECT min(id) FROM jobs_job))"
            " * %s * interval '1 second'",
            [start, SPACING_SECONDS],
        )
        cursor.execute(
            "UPDATE jobs_job j SET last_execution_id = e.id"
            " FROM jobs_jobexecution e WHERE e.job_id = j.id"
        )
        cursor.execute(
            "UPDATE nodes_node n SET allocated_cpu_millis = a.cpu, allocated_memory_mb = a.mem"
            "  FROM (SELECT node_id, sum(cpu_millis) AS cpu, sum(memory_mb) AS mem"
            "          FROM resources_allocation WHERE status <> 'released' GROUP BY node_id) a"
            " WHERE n.id = a.node_id"
        )
        # A job's timeline: submitted, placed, ended; and a chunk of output per attempt.
        cursor.execute(
            "INSERT INTO events_event (at, type, team_id, job_id, message, data, actor)"
            " SELECT j.created_at + k * interval '1 second', t.type, j.team_id, j.id,"
            "        t.type || ' job ' || j.id, '{}'::jsonb, ''"
            "   FROM jobs_job j CROSS JOIN generate_series(0, 2) AS k"
            "   JOIN (VALUES (0, 'job.submitted'), (1, 'job.placed'), (2, 'job.succeeded'))"
            "        AS t(n, type) ON t.n = k"
        )
        cursor.execute(
            'INSERT INTO jobs_joblogchunk (execution_id, seq, first_line, "offset", text,'
            "                              created_at)"
            " SELECT e.id, 0, 1, 0, 'report line 1' || chr(10) || 'report line 2' || chr(10),"
            "        e.started_at FROM jobs_jobexecution e"
        )
        # Settled before timing: no autovacuum or checkpoint of the fill's writes during
        # the requests.
        cursor.execute("VACUUM ANALYZE")
        cursor.execute("CHECKPOINT")
    client = Client()
    client.force_login(user)
    session = client.cookies["sessionid"].value
    team_jobs = list(Job.objects.filter(team=mine).values_list("pk", flat=True))
    pending = list(
        Job.objects.filter(team=mine, status=JobStatus.PENDING).values_list("pk", flat=True)
    )
    return session, team_jobs, pending


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def timed(port: int, paths: list[str], session: str) -> list[float]:
    times = []
    headers = {"Cookie": f"sessionid={session}"}
    for path in paths:
        began = time.perf_counter()
        status, body = http_get(port, path, headers)
        times.append((time.perf_counter() - began) * 1000)
        if status != 200:
            raise SystemExit(f"{path} answered {status}: {body[:300]!r}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    BENCH.set_up()
    print(f"storing {args.jobs} jobs on {args.nodes} nodes", flush=True)
    session, team_jobs, pending = fill(args.jobs, args.nodes)
    from django.db import connections

    connections.close_all()
    rng = random.Random(7)
    n = args.requests
    older = sorted(team_jobs)[len(team_jobs) // 2]
    lists = ["/jobs/", "/jobs/?status=failed", "/jobs/?queue=q1", f"/jobs/?after={older}"]
    pages = {
        "overview": ["/"] * n,
        "jobs": [lists[i % len(lists)] for i in range(n)],
        "job": [f"/jobs/{rng.choice(team_jobs)}/" for _ in range(n)],
        "why": [f"/api/jobs/{rng.choice(pending)}/why/" for _ in range(n)],
    }
    port = free_port()
    web = BENCH.start("web", gunicorn_argv(port))
    results = {}
    try:
        wait_for(lambda: _answers(port, session), 60, "gunicorn", 0.2)
        for name, paths in pages.items():
            timed(port, paths[:10], session)  # warm both workers
            times = timed(port, paths, session)
            results[name] = times
            print(
                f"{name}: p50 {percentile(times, 0.5):.1f} ms, p99 {percentile(times, 0.99):.1f}"
                f" ms, max {max(times):.1f} ms ({len(times)} requests)",
                flush=True,
            )
    finally:
        stop([web])
        BENCH.drop_database()
    print(
        json.dumps(
            {
                **{f"{name}_p99_ms": round(percentile(t, 0.99), 1) for name, t in results.items()},
                **{f"{name}_p50_ms": round(percentile(t, 0.5), 1) for name, t in results.items()},
                "jobs": args.jobs,
                "nodes": args.nodes,
            }
        )
    )


def _answers(port: int, session: str) -> bool:
    try:
        return http_get(port, "/", {"Cookie": f"sessionid={session}"})[0] == 200
    except OSError:
        return False


if __name__ == "__main__":
    main()
