"""Scrape time of /metrics under gunicorn, with 100,000 jobs and 1,000 nodes stored,
and of the usage report.

    .venv/bin/python bench/metrics.py [--jobs 100000] [--nodes 1000] [--scrapes 200]
        [--reports 50]

Sets up its own database (scheduler_bench_metrics) holding --jobs jobs in four queues,
over 30 days: most succeeded, some failed after a retry, cancelled, and a backlog
pending for each reason, reserved and running on the nodes (with their allocations),
each ended one with its attempts; --nodes nodes with what their agents said they use,
a minutely schedule's runs for a week and some node losses. Starts gunicorn with 2
workers as scripts/up does, with METRICS_TOKEN set, and scrapes `GET /metrics` back to
back --scrapes times from one client, as one Prometheus does, timing each: first with
every row still to be read (as right after an upgrade, or with the scheduler stopped),
then after folding the ended executions, the schedule runs and the retries into the
tallies as the scheduler's leader does (timed, then VACUUM ANALYZE as autovacuum would
after so many updates). Then `GET /api/metrics/summary/` as staff the same way. The
usage report of the whole history by team, queue, user and day (`GET
/api/usage/report/`, as staff) is timed --reports times before the fold and after it,
and must say the same both times.

The last line printed is one JSON object of the figures.
"""

import argparse
import contextlib
import http.client
import json
import math
import random
import socket
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.harness import Bench, percentile, stop, wait_for  # noqa: E402

TOKEN = "bench-metrics-token"  # noqa: S105
BENCH = Bench("metrics", 8, METRICS_TOKEN=TOKEN, DB_CONN_MAX_AGE="60", API_THROTTLE_USER="")
# Of every 100 jobs: (status, how many).
MIX = (
    ("succeeded", 85),
    ("failed", 7),
    ("cancelled", 3),
    ("pending", 3),
    ("reserved", 1),
    ("running", 1),
)
REASONS = ("", "insufficient_capacity", "queue_quota", "waiting_retry", "node_selector")
SPACING_SECONDS = 20


def fill(jobs: int, nodes: int) -> str:
    """The cluster; returns a staff user's API token."""
    from django.db import connection
    from django.utils import timezone

    from accounts.models import Team, User
    from accounts.services import api_token_issue
    from jobs.models import Job, JobDefinition, JobExecution, JobRetry, JobSchedule, JobScheduleRun
    from nodes.models import Node, NodeLoss
    from resources.models import DEFAULT_QUEUE_NAME, Allocation, Queue

    rng = random.Random(13)
    now = timezone.now()
    start = now - timedelta(seconds=jobs * SPACING_SECONDS)
    team = Team.objects.create(name="Bench", slug="bench")
    staff = User.objects.create_user("bench-staff", is_staff=True)
    queues = [Queue.objects.get(name=DEFAULT_QUEUE_NAME)] + [
        Queue.objects.create(name=f"q{i}", all_teams=True, quota_cpu_millis=64000 * (i + 1))
        for i in range(3)
    ]
    node_rows = Node.objects.bulk_create(
        Node(
            name=f"node-{i:04d}",
            cpu_millis=16000,
            memory_mb=65536,
            gpu=2 if i % 4 == 0 else 0,
            labels={"zone": "abc"[i % 3]},
            last_heartbeat=now,
            used_cpu_millis=rng.randrange(0, 8000),
            used_memory_mb=rng.randrange(0, 32000),
        )
        for i in range(nodes)
    )
    NodeLoss.objects.bulk_create(
        NodeLoss(node_name=f"node-{i:04d}", lost_at=now - timedelta(hours=i)) for i in range(50)
    )
    statuses = [status for status, share in MIX for _ in range(share)]
    live_count = 0  # live attempts go round the nodes, so none is overfull
    batch = 10_000
    for first in range(0, jobs, batch):
        planned = []
        for i in range(first, min(first + batch, jobs)):
            status = statuses[i % len(statuses)]
            reason = REASONS[i % len(REASONS)] if status == "pending" else ""
            planned.append(
                (
                    i,
                    Job(
                        team=team,
                        queue=queues[i % len(queues)],
                        name=f"report-{i % 50}",
                        command=["true"],
                        status=status,
                        pending_reason=reason,
                        attempts=0 if status == "pending" else 2 if status == "failed" else 1,
                    ),
                )
            )
        created = Job.objects.bulk_create([job for _, job in planned])
        executions, retries, allocations = [], [], []
        for (i, _), job in zip(planned, created, strict=True):
            created_at = start + timedelta(seconds=i * SPACING_SECONDS)
            attempts = 2 if job.status == "failed" else 0 if job.status == "pending" else 1
            at = created_at
            for attempt in range(1, attempts + 1):
                started = at + timedelta(seconds=rng.expovariate(1 / 30))
                ended = started + timedelta(seconds=rng.expovariate(1 / 300))
                live = job.status in ("reserved", "running")
                node = node_rows[(live_count if live else i) % nodes]
                live_count += live
                executions.append(
                    JobExecution(
                        job=job,
                        attempt=attempt,
                        node=node,
                        token=f"job-{job.pk}-attempt-{attempt}",
                        status=job.status if attempt == attempts else "failed",
                        reserved_at=at,
                        started_at=None if job.status == "reserved" else started,
                        finished_at=None if live else ended,
                    )
                )
                if attempt < attempts:
                    retries.append(
                        JobRetry(job=job, attempt=attempt + 1, reason="exit 1", due_at=ended)
                    )
                at = ended + timedelta(seconds=10)
        JobExecution.objects.bulk_create(executions)
        JobRetry.objects.bulk_create(retries)
        for execution in executions:
            if execution.status in ("reserved", "running"):
                allocations.append(
                    Allocation(
                        execution=execution,
                        node=execution.node,
                        queue_id=execution.job.queue_id,
                        team_id=execution.job.team_id,
                        cpu_millis=1000,
                        memory_mb=1024,
                        status="reserved" if execution.status == "reserved" else "active",
                        activated_at=execution.started_at,
                    )
                )
        Allocation.objects.bulk_create(allocations)
        print(f"  {min(first + batch, jobs)} jobs", flush=True)
    definition = JobDefinition.objects.create(
        team=team, queue=queues[0], name="minutely", command=["true"]
    )
    schedule = JobSchedule.objects.create(
        team=team, definition=definition, name="minutely", interval_seconds=60
    )
    JobScheduleRun.objects.bulk_create(
        JobScheduleRun(
            schedule=schedule,
            due_at=now - timedelta(minutes=m),
            fired_at=now - timedelta(minutes=m) + timedelta(seconds=rng.uniform(0.01, 2)),
            outcome="submitted" if m % 20 else "skipped_running",
        )
        for m in range(1, 7 * 24 * 60)
    )
    with connection.cursor() as cursor:
        # auto_now_add set created_at on insert; put back the spread-out history, the same
        # the executions' times were counted from.
        cursor.execute(
            "UPDATE jobs_job SET created_at = %s + (id - (SELECT min(id) FROM jobs_job))"
            " * %s * interval '1 second'",
            [start, SPACING_SECONDS],
        )
        cursor.execute(
            "UPDATE nodes_node n SET allocated_cpu_millis = a.cpu, allocated_memory_mb = a.mem"
            "  FROM (SELECT node_id, sum(cpu_millis) AS cpu, sum(memory_mb) AS mem"
            "          FROM resources_allocation WHERE status <> 'released' GROUP BY node_id) a"
            " WHERE n.id = a.node_id"
        )
        for table in ("jobs_job", "jobs_jobexecution", "jobs_jobretry", "resources_allocation"):
            cursor.execute(f"VACUUM ANALYZE {table}")
    return api_token_issue(user=staff, name="bench").key


def get(port: int, path: str, authorization: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"Authorization": authorization})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def timed(port: int, path: str, authorization: str, count: int) -> tuple[list[float], bytes]:
    latencies, body = [], b""
    for _ in range(count):
        began = time.perf_counter()
        status, body = get(port, path, authorization)
        latencies.append((time.perf_counter() - began) * 1000)
        if status != 200:
            raise SystemExit(f"{path} answered {status}: {body[:300]!r}")
    return latencies, body


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--reports", type=int, default=50)
    args = parser.parse_args()

    BENCH.set_up()
    print(f"storing {args.jobs} jobs on {args.nodes} nodes", flush=True)
    token = fill(args.jobs, args.nodes)
    # The whole history (30 days, spread back from now), by day.
    since = (datetime.now(UTC) - timedelta(days=45)).date()
    from django.db import connections

    connections.close_all()
    port = free_port()
    web = BENCH.start(
        "web",
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "scheduler_site.wsgi",
            f"--bind=127.0.0.1:{port}",
            "--workers=2",
        ],
    )
    bearer = f"Bearer {TOKEN}"
    try:
        wait_for(lambda: _answers(port, bearer), 60, "gunicorn", 0.2)
        timed(port, "/metrics", bearer, 10)  # warm both workers
        print(f"{args.scrapes} scrapes of /metrics, nothing folded, back to back", flush=True)
        unfolded, unfolded_body = timed(port, "/metrics", bearer, args.scrapes)
        report_path = f"/api/usage/report/?by=team,queue,user,day&since={since}"
        staff = f"Token {token}"
        timed(port, report_path, staff, 5)
        print(f"{args.reports} usage reports, nothing folded, back to back", flush=True)
        unfolded_reports, unfolded_report = timed(port, report_path, staff, args.reports)
        fold_seconds = fold()
        print(f"folded what never changes again in {fold_seconds:.1f} s", flush=True)
        print(f"{args.scrapes} scrapes of /metrics, back to back", flush=True)
        scrapes, body = timed(port, "/metrics", bearer, args.scrapes)
        if not _same(_figures(body), _figures(unfolded_body)):
            raise SystemExit("/metrics said something else once its rows were folded")
        summary_path = "/api/metrics/summary/"
        timed(port, summary_path, f"Token {token}", 10)
        print(f"{args.scrapes} requests of {summary_path}, back to back", flush=True)
        summaries, _ = timed(port, summary_path, f"Token {token}", args.scrapes)
        print(f"{args.reports} usage reports, back to back", flush=True)
        reports, report = timed(port, report_path, staff, args.reports)
        if not _same_report(json.loads(report), json.loads(unfolded_report)):
            raise SystemExit("the usage report said something else once its rows were folded")
    finally:
        stop([web])
        BENCH.drop_database()
    samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    p50, p99 = percentile(scrapes, 0.5), percentile(scrapes, 0.99)
    u50, u99 = percentile(unfolded, 0.5), percentile(unfolded, 0.99)
    print(f"/metrics with nothing folded: p50 {u50:.1f} ms, p99 {u99:.1f} ms")
    s50, s99 = percentile(summaries, 0.5), percentile(summaries, 0.99)
    print(
        f"/metrics: {len(body) / 1024:.0f} KiB, {samples} samples; p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms, mean {statistics.mean(scrapes):.1f} ms, max {max(scrapes):.1f} ms"
    )
    print(f"{summary_path}: p50 {s50:.1f} ms, p99 {s99:.1f} ms, max {max(summaries):.1f} ms")
    r50, r99 = percentile(reports, 0.5), percentile(reports, 0.99)
    ru50 = percentile(unfolded_reports, 0.5)
    rows = len(json.loads(report)["rows"])
    print(
        f"usage report ({rows} rows): p50 {r50:.1f} ms, p99 {r99:.1f} ms; "
        f"with nothing folded p50 {ru50:.1f} ms"
    )
    print(
        json.dumps(
            {
                "scrape_p50_ms": round(p50, 1),
                "scrape_p99_ms": round(p99, 1),
                "unfolded_scrape_p50_ms": round(u50, 1),
                "unfolded_scrape_p99_ms": round(u99, 1),
                "fold_seconds": round(fold_seconds, 2),
                "summary_p50_ms": round(s50, 1),
                "summary_p99_ms": round(s99, 1),
                "report_p50_ms": round(r50, 1),
                "report_p99_ms": round(r99, 1),
                "unfolded_report_p50_ms": round(ru50, 1),
                "scrape_bytes": len(body),
                "samples": samples,
                "jobs": args.jobs,
                "nodes": args.nodes,
            }
        )
    )


def _same_report(folded: dict, unfolded: dict) -> bool:
    """The same rows and attempts; hours equal to the microhour (sums in another order),
    but on today's rows, where the attempts still running have run longer since."""
    if len(folded["rows"]) != len(unfolded["rows"]):
        print(f"{len(unfolded['rows'])} rows, then {len(folded['rows'])}")
        return False
    today = str(datetime.now(UTC).date())
    for after, before in zip(folded["rows"], unfolded["rows"], strict=True):
        for key, a in after.items():
            b = before[key]
            if isinstance(a, float):
                same = after["day"] == today or abs(a - b) <= 2e-6 * max(1, abs(a))
            else:
                same = a == b
            if not same:
                print(f"{key}: {before}, then {after}")
                return False
    return True


def fold() -> float:
    """Seconds to fold every ended execution, schedule run and retry, as the scheduler's
    leader does."""
    from django.db import connection, connections

    from jobs.services.metrics_tallies import metrics_tallies_fold

    began = time.perf_counter()
    metrics_tallies_fold(budget_seconds=float("inf"))
    took = time.perf_counter() - began
    with connection.cursor() as cursor:
        for table in ("jobexecution", "jobschedulerun", "jobretry"):
            cursor.execute(f"VACUUM ANALYZE jobs_{table}")
    connections.close_all()
    return took


def _figures(body: bytes) -> dict[bytes, float]:
    """The samples, without the one that moves with the clock."""
    return {
        name: float(value)
        for name, value in (line.rsplit(b" ", 1) for line in body.splitlines())
        if not name.startswith((b"#", b"scheduler_oldest_pending_job_age_seconds"))
    }


def _same(folded: dict[bytes, float], unfolded: dict[bytes, float]) -> bool:
    """The same samples with the same values (sums of seconds added up in another order
    may differ in their last digits)."""
    return folded.keys() == unfolded.keys() and all(
        math.isclose(folded[name], unfolded[name], rel_tol=1e-9) for name in folded
    )


def _answers(port: int, bearer: str) -> bool:
    try:
        return get(port, "/metrics", bearer)[0] == 200
    except OSError:
        return False


if __name__ == "__main__":
    main()
