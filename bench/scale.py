"""The control plane with many nodes: hollow nodes (`run_node --hollow`), a steady stream
of jobs in weighted queues, and what it costs the web, the scheduler and PostgreSQL.

    .venv/bin/python bench/scale.py [--nodes 1000] [--jobs 20000] [--rate R]
                                    [--nodes-per-process 250] [--node-cpu 4]
                                    [--web-workers 2] [--clients 4]

Sets up its own database (scheduler_bench_scale) and Redis database (8), starts a
scheduler, the web (gunicorn, as scripts/up does) and --nodes hollow nodes in processes
of --nodes-per-process each, every node with a key of its own. It submits --jobs jobs
(1 CPU; `parameters.hollow_seconds` uniform in 1 to 10 s) spread over 4 queues of
weights 1 to 4, at --rate jobs per second (default 0.25 per node: 250/s for 1,000
nodes), from --clients threads through the submission service (the web serves the
agents' traffic only). It prints progress every few seconds, then:

- jobs_per_second: completions per second while the stream was steady (between the
  10th and the 90th percentile of finish times),
- start_p50_ms, start_p99_ms: each job's submit-to-start (created_at to started_at),
- cycle_p99_ms: the scheduler's cycles that placed or held work (from its log),
- pg_connections_peak: backends on the bench's database, sampled each half second,
- cpu_seconds_per_1000_jobs: CPU time of the web (all its workers), the scheduler and the
  database (the backends serving the bench's database; PostgreSQL's shared background
  processes are not counted), and, for information, the hollow nodes and this process
  (the submitters).

Last line one JSON object with those figures.
"""

import argparse
import json
import math
import os
import random
import re
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.harness import (  # noqa: E402
    Bench,
    gunicorn_argv,
    listening,
    percentile,
    stop,
    wait_for,
)

QUEUE_WEIGHTS = {"scale-1": 1, "scale-2": 2, "scale-3": 3, "scale-4": 4}
API_PORT = 8797
SAMPLE_SECONDS = 0.5
PROGRESS_SECONDS = 5.0
# The bench gives up when no job changed status for this long (nodes lost, say).
STALL_SECONDS = 120
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CYCLE_LINE = re.compile(rb"cycle considered=.* place_ms=([\d.]+) publish_ms=([\d.]+)")


def cpu_seconds(pid: int) -> float | None:
    """User and system CPU time of one process, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_by_parent() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                parent = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        tree.setdefault(parent, []).append(int(entry))
    return tree


def with_descendants(root: int, tree: dict[int, list[int]]) -> list[int]:
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(tree.get(pid, ()))
    return pids


class CpuMeter:
    """CPU time of groups of processes, each process counted up to its last sample."""

    def __init__(self):
        self.last: dict[str, dict[int, float]] = {}
        self.start: dict[str, float] = {}

    def sample(self, group: str, pids) -> None:
        seen = self.last.setdefault(group, {})
        for pid in pids:
            used = cpu_seconds(pid)
            if used is not None:
                seen[pid] = used

    def mark(self) -> None:
        """From now on: what was used before does not count."""
        self.start = {group: sum(seen.values()) for group, seen in self.last.items()}

    def used(self, group: str) -> float:
        return sum(self.last.get(group, {}).values()) - self.start.get(group, 0.0)


class Sampler(threading.Thread):
    """Every SAMPLE_SECONDS: the backends on the bench's database and the CPU time of
    the processes measured."""

    def __init__(self, db_name: str, roots: dict[str, list[int]]):
        super().__init__(daemon=True)
        import psycopg

        self.conn = psycopg.connect(
            dbname=db_name, user="postgres", host="127.0.0.1", autocommit=True
        )
        self.own_pid = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        self.db_name = db_name
        self.roots = roots
        self.meter = CpuMeter()
        self.connections_peak = 0
        self.stopped = threading.Event()
        self.sample()

    def sample(self) -> None:
        backends = [
            pid
            for (pid,) in self.conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> %s",
                [self.db_name, self.own_pid],
            )
        ]
        self.connections_peak = max(self.connections_peak, len(backends))
        self.meter.sample("database", backends)
        tree = children_by_parent()
        for group, roots in self.roots.items():
            self.meter.sample(group, [p for root in roots for p in with_descendants(root, tree)])
        self.meter.sample("bench", [os.getpid()])

    def run(self) -> None:
        while not self.stopped.wait(SAMPLE_SECONDS):
            self.sample()

    def counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT status, count(*) FROM jobs_job GROUP BY status")
        return dict(rows.fetchall())

    def stop(self) -> None:
        self.stopped.set()
        self.join()
        self.sample()
        self.conn.close()


def key_file(bench: Bench, prefix: str, count: int) -> Path:
    """A key for each of PREFIX-1 to PREFIX-count, in a file of `NAME KEY` lines."""
    from nodes.services import node_credential_issue

    path = bench.work / f"{prefix}.keys"
    path.touch(mode=0o600)
    names = [f"{prefix}-{i}" for i in range(1, count + 1)]
    path.write_text("".join(f"{n} {node_credential_issue(node_name=n)[1]}\n" for n in names))
    return path


def cycle_durations_ms(log: Path) -> list[float]:
    return [
        float(place) + float(publish) for place, publish in CYCLE_LINE.findall(log.read_bytes())
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument(
        "--rate", type=float, help="jobs submitted per second (default: 0.25 per node)"
    )
    parser.add_argument("--nodes-per-process", type=int, default=250)
    parser.add_argument("--node-cpu", type=int, default=4, help="CPUs of each hollow node")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4, help="threads submitting")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rate = args.rate or 0.25 * args.nodes
    if listening(API_PORT):
        raise SystemExit(f"port {API_PORT} is taken (a web server of an earlier run?)")
    # SIGTERM (timeout, CI) stops the processes started, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"stopped by signal {signum}"))
    bench = Bench("scale", 8)
    bench.set_up()
    try:
        run(args, bench, rate)
    finally:
        from django.db import connections

        connections.close_all()
        bench.drop_database()


def run(args, bench: Bench, rate: float) -> None:
    from accounts.models import Team
    from jobs.services.submission import job_submit
    from nodes.models import Node, NodeStatus
    from resources.models import Queue

    team = Team.objects.create(name="Scale", slug="scale")
    for name, weight in QUEUE_WEIGHTS.items():
        Queue.objects.create(name=name, all_teams=True, weight=weight)
    manage = [sys.executable, str(ROOT / "manage.py")]
    processes = []
    try:
        scheduler = bench.start("scheduler", [*manage, "run_scheduler"], env={"LOG_LEVEL": "INFO"})
        web_argv = gunicorn_argv(API_PORT)
        web_argv[web_argv.index("--workers=2")] = f"--workers={args.web_workers}"
        web = bench.start("web", web_argv)
        processes += [scheduler, web]
        hollow_env = {
            "SCHEDULER_API_URL": f"http://127.0.0.1:{API_PORT}",
            "HOLLOW_NODES_ALLOWED": "true",
            "LOG_LEVEL": "INFO",
        }
        hollow = []
        for p in range(math.ceil(args.nodes / args.nodes_per_process)):
            count = min(args.nodes_per_process, args.nodes - p * args.nodes_per_process)
            prefix = f"scale{p}"
            argv = [
                *manage,
                "run_node",
                f"--name={prefix}",
                f"--hollow={count}",
                f"--cpu={args.node_cpu}",
                "--memory-mb=65536",
                "--gpu=0",
            ]
            env = {**hollow_env, "NODE_KEY_FILE": str(key_file(bench, prefix, count))}
            hollow.append((prefix, count, bench.start(prefix, argv, env=env, database=False)))
        processes += [process for _, _, process in hollow]
        print(
            f"{args.nodes} hollow nodes in {len(hollow)} processes, {args.node_cpu} CPU each; "
            f"{args.jobs} jobs at {rate:g}/s in queues {QUEUE_WEIGHTS}",
            flush=True,
        )

        def nodes_consuming() -> bool:
            for prefix, count, process in hollow:
                if process.poll() is not None:
                    raise SystemExit(f"hollow nodes {prefix} exited; see {bench.work}")
                log = (bench.work / f"{prefix}.log").read_bytes()
                if f"hollow nodes consuming {count} queues".encode() not in log:
                    return False
            return Node.objects.filter(status=NodeStatus.READY).count() == args.nodes

        started = time.monotonic()
        wait_for(nodes_consuming, 600, "the hollow nodes", 1.0)
        print(f"nodes ready after {time.monotonic() - started:.1f} s", flush=True)
        sampler = Sampler(
            bench.db_name,
            {
                "web": [web.pid],
                "scheduler": [scheduler.pid],
                "hollow": [process.pid for _, _, process in hollow],
            },
        )
        sampler.start()
        sampler.meter.mark()
        submitted = submit_stream(args, team, rate, job_submit, sampler)
        sampler.stop()
        report(args, bench, sampler, submitted)
    finally:
        stop(processes)


def submit_stream(args, team, rate: float, job_submit, sampler: Sampler) -> float:
    """Submit the jobs at `rate` from `--clients` threads, printing progress until all
    have ended; the submission rate achieved."""
    rng = random.Random(args.seed)
    specs = [
        {
            "name": "hollow",
            "command": ["true"],
            "queue": rng.choice(list(QUEUE_WEIGHTS)),
            "parameters": {"hollow_seconds": round(rng.uniform(1, 10), 3)},
            "cpu_millis": 1000,
            "memory_mb": 16,
            "gpu": 0,
        }
        for _ in range(args.jobs)
    ]
    begin = time.monotonic()

    def submit(i: int) -> None:
        delay = begin + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        job_submit(team=team, spec=specs[i])

    with ThreadPoolExecutor(args.clients) as pool:  # a database connection each
        done = pool.map(submit, range(args.jobs))
        submitting = threading.Thread(target=lambda: list(done), daemon=True)
        submitting.start()
        ended, last_change, last_counts = 0, time.monotonic(), {}
        while ended < args.jobs:
            time.sleep(PROGRESS_SECONDS)
            counts = sampler.counts()
            ended = sum(counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
            if counts != last_counts:
                last_change, last_counts = time.monotonic(), counts
            elif time.monotonic() - last_change > STALL_SECONDS:
                raise SystemExit(f"no job changed status for {STALL_SECONDS} s: {counts}")
            print(
                f"{time.monotonic() - begin:6.1f} s: "
                + " ".join(f"{status} {n}" for status, n in sorted(counts.items()))
                + f"; pg connections peak {sampler.connections_peak}",
                flush=True,
            )
        submitting.join()
    return args.jobs / (time.monotonic() - begin)


def report(args, bench: Bench, sampler: Sampler, submitted: float) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT extract(epoch FROM finished_at), "
            "1000 * extract(epoch FROM started_at - created_at), status, attempts "
            "FROM jobs_job ORDER BY finished_at"
        )
        rows = cursor.fetchall()
    finished = [float(r[0]) for r in rows if r[0] is not None]
    starts = [float(r[1]) for r in rows if r[1] is not None]
    failed = sum(1 for r in rows if r[2] != "succeeded")
    retried = sum(1 for r in rows if r[3] > 1)
    low, high = percentile(finished, 0.1), percentile(finished, 0.9)
    steady = sum(1 for f in finished if low <= f <= high)
    cycles = cycle_durations_ms(bench.work / "scheduler.log")
    per_1000 = 1000 / len(rows)
    cpu = {
        group: round(sampler.meter.used(group) * per_1000, 2)
        for group in ("web", "scheduler", "database", "hollow", "bench")
    }
    print(
        f"{len(rows)} jobs, {failed} not succeeded, {retried} with more than one attempt; "
        f"submitted at {submitted:.1f}/s; {len(cycles)} scheduler cycles",
        flush=True,
    )
    print(f"CPU seconds per 1,000 jobs: {cpu}", flush=True)
    print(
        json.dumps(
            {
                "nodes": args.nodes,
                "jobs": len(rows),
                "jobs_per_second": round(steady / (high - low), 1) if high > low else None,
                "start_p50_ms": round(percentile(starts, 0.5), 1),
                "start_p99_ms": round(percentile(starts, 0.99), 1),
                "cycle_p99_ms": round(percentile(cycles, 0.99), 1) if cycles else None,
                "pg_connections_peak": sampler.connections_peak,
                "cpu_seconds_per_1000_jobs": cpu,
                # Live nodes failed over run their jobs again: this should stay 0.
                "jobs_with_more_than_one_attempt": retried,
            }
        )
    )


if __name__ == "__main__":
    main()
