"""Throughput and submit-to-start latency of the whole platform, against bare Celery.

    .venv/bin/python bench/throughput.py [--jobs 2000] [--rounds 3] [--latency-samples 200]
                                         [--slots 8] [--clients 4] [--command true]
                                         [--broker both|redis|rabbitmq] [--cgroups off|auto]

Sets up its own database (scheduler_bench_tp) and Redis database (12), starts a real
scheduler and one node agent (--slots threads, as much CPU as slots, 1 CPU per job),
and a bare Celery worker with the same pool, concurrency, acks and prefetch running the
same command (`true`, or --command; the agent ships what it prints, the bare worker
drops it). Measures completed jobs per second for each, submitted from --clients
threads at once, in --rounds rounds that alternate the two (platform, bare, platform,
bare, ...), so that both sides meet the machine's drift alike: a shared machine's speed
moves by a third between minutes, more than the difference measured. Each side's figure
is the median of its rounds, and the ratio the median of the rounds' ratios (the two
runs of a round are a minute apart at most); every round is printed. Each side's run
also reads the whole machine's CPU time (/proc/stat: every process, the kernel's work for
them included) per completed job: `cpu_bound_ratio`, bare Celery's over the platform's,
is the ratio both would reach with every core busy, so it tells a rate bound by CPU from
one bound by waiting. Then, with free capacity, the latency from a job's creation to its
start, one job at a time. Each run ends with one line, a JSON object of the figures and
its `broker`.

With --broker both (the default) it runs once on Redis, then once on RabbitMQ (a vhost
of its own, `scheduler_bench_tp`, made and deleted with rabbitmqctl; the cache and the
bare worker's counter stay on Redis), so it prints one JSON line per broker, RabbitMQ's
last. Where RabbitMQ is not installed or not running, its line says so instead.

The agent runs with NODE_CGROUPS=off unless --cgroups auto: bare Celery puts its tasks in
no control group, and a job's own cgroup costs the agent's host a few milliseconds of CPU
a job (README, "Control groups"), which this bench of jobs that run `true` measures when
asked. The JSON line says which it ran (`node_cgroups`).
"""

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.harness import (  # noqa: E402
    Bench,
    machine_busy_seconds,
    percentile,
    redis_url,
    stop,
    wait_for,
)

POLL_SECONDS = 0.05
BROKERS = ("redis", "rabbitmq")
RABBITMQ_VHOST = "scheduler_bench_tp"
RABBITMQ_URL = f"amqp://guest:guest@127.0.0.1:5672/{RABBITMQ_VHOST}"


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True)


@dataclass(frozen=True)
class Run:
    rate: float  # completed per second
    cpu_ms: float  # the whole machine's CPU time per completed job, all cores together
    cores: float  # cores busy on average


def measured(count: int, submit, wait_done) -> Run:
    """Submit `count` jobs and wait for them; the rate and the machine's CPU time."""
    started, busy = time.perf_counter(), machine_busy_seconds()
    submit()
    wait_done()
    elapsed, used = time.perf_counter() - started, machine_busy_seconds() - busy
    return Run(count / elapsed, used * 1000 / count, used / elapsed)


def rabbitmq_running() -> bool:
    if not shutil.which("rabbitmqctl"):
        return False
    return rabbitmqctl("await_startup", "--timeout", "5").returncode == 0


def run_per_broker(argv: list[str], brokers: list[str]) -> None:
    """This bench once per broker, each in a process of its own (Django reads the broker
    URL once), its output passed on as it comes."""
    for broker in brokers:
        if broker == "rabbitmq" and not rabbitmq_running():
            skipped = "RabbitMQ is not installed or not running"
            print(json.dumps({"broker": "rabbitmq", "skipped": skipped}), flush=True)
            continue
        subprocess.run([sys.executable, __file__, *argv, f"--broker={broker}"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--jobs",
        type=int,
        default=2000,
        help="jobs per throughput run: enough that each run lasts seconds, not one",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="throughput rounds of each side, alternated"
    )
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument(
        "--command",
        default="true",
        help="what each job runs, split as a shell would; the bare worker runs it too "
        "(e.g. 'seq 1 20' for output for the agent to ship)",
    )
    parser.add_argument(
        "--clients", type=int, default=4, help="threads submitting at once, in both phases"
    )
    parser.add_argument("--broker", choices=["both", *BROKERS], default="both")
    parser.add_argument(
        "--cgroups",
        choices=["off", "auto"],
        default="off",
        help="the agent's NODE_CGROUPS: off (as bare Celery), or auto (a cgroup per job)",
    )
    args = parser.parse_args()
    os.environ["NODE_CGROUPS"] = args.cgroups  # the agent's, through the bench's environment
    if args.broker == "both":
        run_per_broker([a for a in sys.argv[1:] if not a.startswith("--broker")], list(BROKERS))
        return

    if args.broker == "rabbitmq":
        rabbitmqctl("delete_vhost", RABBITMQ_VHOST)
        rabbitmqctl("add_vhost", RABBITMQ_VHOST).check_returncode()
        rabbitmqctl("set_permissions", "-p", RABBITMQ_VHOST, "guest", ".*", ".*", ".*")
        # The cache and the bare worker's counter stay in the Redis databases they use
        # with a Redis broker.
        bench = Bench("tp", 12, CELERY_BROKER_URL=RABBITMQ_URL, BENCH_COUNTER_URL=redis_url(12))
    else:
        bench = Bench("tp", 12)
    try:
        run(args, bench)
    finally:
        if args.broker == "rabbitmq":
            rabbitmqctl("delete_vhost", RABBITMQ_VHOST)


def run(args, bench: Bench) -> None:
    broker = bench.set_up()  # the Redis database of the bench (the broker's, with Redis)

    from accounts.models import Team
    from jobs.models import Job, JobStatus
    from jobs.services.submission import job_submit
    from nodes.models import Node

    team = Team.objects.create(name="Bench", slug="bench")
    manage = [sys.executable, str(ROOT / "manage.py")]
    celery = [sys.executable, "-m", "celery"]
    # The node agent's worker settings (run_node), for the bare worker too.
    worker_flags = [
        "--pool=threads",
        f"--concurrency={args.slots}",
        "--without-gossip",
        "--without-mingle",
        "--task-events",
        "--loglevel=WARNING",
    ]
    processes = [
        bench.start("scheduler", [*manage, "run_scheduler"]),
        *bench.start_node_agent(
            "node",
            [
                *manage,
                "run_node",
                "--name",
                "bench",
                f"--cpu={args.slots}",
                "--memory-mb=65536",
                f"--slots={args.slots}",
                "--loglevel=WARNING",
            ],
        ),
        bench.start(
            "bare",
            [
                *celery,
                "-A",
                "bench.bare_celery",
                "worker",
                "-Q",
                "bare",
                "-n",
                "bare@%h",
                *worker_flags,
            ],
        ),
    ]
    try:
        wait_for(lambda: Node.objects.filter(name="bench").exists(), 30, "the node", 0.1)
        time.sleep(3)  # workers connected and consuming
        spec = {
            "name": "trivial",
            "command": shlex.split(args.command),
            "cpu_millis": 1000,
            "memory_mb": 16,
            "gpu": 0,
        }

        def submit_all(count: int, submit_one) -> None:
            """`count` submissions from `--clients` threads, as from that many users."""
            with ThreadPoolExecutor(args.clients) as pool:  # one database connection each
                list(pool.map(lambda _: submit_one(), range(count)))

        def platform_submit() -> int:
            return job_submit(team=team, spec=spec).job.id

        def platform_run(count: int) -> Run:
            first = Job.objects.order_by("-id").values_list("id", flat=True).first() or 0
            done = Job.objects.filter(id__gt=first, status=JobStatus.SUCCEEDED)
            # Polled gently: this process shares the two cores with what it measures.
            return measured(
                count,
                lambda: submit_all(count, platform_submit),
                lambda: wait_for(
                    lambda: done.count() == count, 300, "the platform jobs", POLL_SECONDS
                ),
            )

        from bench.bare_celery import COUNTER, run_command

        def bare_run(count: int) -> Run:
            broker.delete(COUNTER)
            return measured(
                count,
                lambda: submit_all(count, lambda: run_command.delay(shlex.split(args.command))),
                lambda: wait_for(
                    lambda: int(broker.get(COUNTER) or 0) == count,
                    300,
                    "the bare tasks",
                    POLL_SECONDS,
                ),
            )

        platform_run(20)  # warm-up: connections, imports
        bare_run(20)
        platforms, bares = [], []
        for round_ in range(1, args.rounds + 1):
            platforms.append(platform_run(args.jobs))
            bares.append(bare_run(args.jobs))
            p, b = platforms[-1], bares[-1]
            print(
                f"round {round_}: platform {p.rate:.1f} jobs/s ({p.cpu_ms:.2f} ms of CPU a "
                f"job, {p.cores:.2f} cores busy), bare Celery {b.rate:.1f} tasks/s "
                f"({b.cpu_ms:.2f} ms, {b.cores:.2f} cores), ratio {p.rate / b.rate:.3f}",
                flush=True,
            )
        platform = statistics.median(r.rate for r in platforms)
        bare = statistics.median(r.rate for r in bares)
        ratios = [p.rate / b.rate for p, b in zip(platforms, bares, strict=True)]
        platform_cpu = statistics.median(r.cpu_ms for r in platforms)
        bare_cpu = statistics.median(r.cpu_ms for r in bares)
        cpu_bound_ratio = bare_cpu / platform_cpu  # the ratio with every core busy
        print(
            f"throughput (medians of {args.rounds} rounds): platform {platform:.1f} jobs/s, "
            f"bare Celery {bare:.1f} tasks/s ({args.jobs} jobs running {args.command!r}, "
            f"{args.slots} slots); machine CPU a job: platform {platform_cpu:.2f} ms, bare "
            f"Celery {bare_cpu:.2f} ms, so with every core busy on both sides the ratio "
            f"would be {cpu_bound_ratio:.3f}"
        )

        latencies = []
        for _ in range(args.latency_samples):
            job = job_submit(team=team, spec=spec).job
            wait_for(
                lambda j=job: Job.objects.filter(pk=j.pk, started_at__isnull=False).exists(),
                30,
                "a job to start",
                0.002,
            )
            job.refresh_from_db()
            latencies.append((job.started_at - job.created_at).total_seconds() * 1000)
            wait_for(
                lambda j=job: Job.objects.filter(pk=j.pk, status=JobStatus.SUCCEEDED).exists(),
                30,
                "a job to end",
                0.002,
            )
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        print(
            f"submit-to-start over {len(latencies)} jobs: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
            f"mean {statistics.fmean(latencies):.1f} ms"
        )
    finally:
        stop(processes)
        broker.flushdb()
        from django.db import connections

        connections.close_all()
        bench.drop_database()
    print(
        json.dumps(
            {
                "broker": args.broker,
                "node_cgroups": args.cgroups,
                "platform_jobs_per_second": round(platform, 1),
                "bare_celery_jobs_per_second": round(bare, 1),
                "ratio": round(statistics.median(ratios), 3),
                "round_ratios": [round(r, 3) for r in ratios],
                "platform_cpu_ms_per_job": round(platform_cpu, 2),
                "bare_celery_cpu_ms_per_job": round(bare_cpu, 2),
                "cpu_bound_ratio": round(cpu_bound_ratio, 3),
                "submit_to_start_p50_ms": round(p50, 1),
                "submit_to_start_p99_ms": round(p99, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
