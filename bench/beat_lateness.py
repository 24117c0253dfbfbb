"""Lateness of a one-second schedule: from each due time to its job `running`.

    .venv/bin/python bench/beat_lateness.py [--seconds 60] [--interval 1]

Sets up its own database (scheduler_bench_beat) and Redis database (11, on the port of
CELERY_BROKER_URL, default 6379), starts real beat (DatabaseScheduler), control worker,
scheduler and node agent processes, and creates one interval schedule running `true`.
After --seconds of due times it reports, per due time, the lateness of the trigger
(beat and the control worker) and of the job's start, and how many due times had no
job. The last line printed is one JSON object of the figures.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "scheduler_bench_beat"
_broker = urlsplit(os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
BROKER_URL = f"redis://{_broker.hostname or '127.0.0.1'}:{_broker.port or 6379}/11"
WORK = Path(tempfile.mkdtemp(prefix="bench-beat-"))
ENV = {
    **os.environ,
    "DJANGO_SETTINGS_MODULE": "scheduler_site.settings",
    "SECRET_KEY": "bench-only",
    "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
    "CELERY_BROKER_URL": BROKER_URL,
    "NODE_WORK_DIR": str(WORK / "work"),
    "JOB_LOG_DIR": str(WORK / "logs"),
    "LOG_LEVEL": "WARNING",
    "PYTHONPATH": str(ROOT),
}
os.environ.update(ENV)
sys.path.insert(0, str(ROOT))


def psql(sql: str) -> None:
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", sql],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def start(name: str, argv: list[str]) -> subprocess.Popen:
    log = (WORK / f"{name}.log").open("wb")
    return subprocess.Popen(
        argv, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in processes:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--interval", type=int, default=1)
    args = parser.parse_args()

    psql(f"DROP DATABASE IF EXISTS {DB_NAME}")
    psql(f"CREATE DATABASE {DB_NAME}")
    import django

    django.setup()
    import redis
    from django.core.management import call_command
    from django.utils import timezone

    from accounts.models import Team
    from jobs.models import JobDefinition, JobScheduleRun
    from jobs.schedules import schedule_create, schedule_pause
    from nodes.models import Node
    from resources.models import Queue

    broker = redis.Redis.from_url(BROKER_URL)
    broker.flushdb()
    call_command("migrate", verbosity=0)
    team = Team.objects.create(name="Bench", slug="bench")
    manage = [sys.executable, str(ROOT / "manage.py")]
    celery = [sys.executable, "-m", "celery", "-A", "scheduler_site"]
    quiet = ["--loglevel=WARNING"]
    worker = ["--concurrency=2", "--pool=threads", "--without-gossip", "--without-mingle"]
    processes = [
        start("scheduler", [*manage, "run_scheduler"]),
        start("node", [*manage, "run_node", "--name=bench", "--cpu=4", "--memory-mb=4096"]),
        start(
            "control",
            [*celery, "worker", "-Q", "control", "-n", "control@%h", *worker, *quiet],
        ),
        start(
            "beat",
            [
                *celery,
                "beat",
                "-S",
                "django_celery_beat.schedulers:DatabaseScheduler",
                "--pidfile=",
                *quiet,
            ],
        ),
    ]
    try:
        deadline = time.monotonic() + 60
        while not Node.objects.filter(name="bench").exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"the node agent did not register; logs in {WORK}")
            time.sleep(0.2)
        time.sleep(3)  # workers connected and consuming, beat running
        definition = JobDefinition.objects.create(
            team=team,
            name="trivial",
            command=["true"],
            queue=Queue.objects.get(name="default"),
            cpu_millis=100,
            memory_mb=16,
        )
        start_at = timezone.now() + timedelta(seconds=3)
        schedule = schedule_create(
            team=team,
            definition=definition,
            fields={
                "name": "every-second",
                "interval_seconds": args.interval,
                "start_at": start_at,
            },
        )
        window_end = start_at + timedelta(seconds=args.seconds)
        time.sleep((window_end - timezone.now()).total_seconds() + 3)
        schedule_pause(schedule=schedule)
        runs = list(
            JobScheduleRun.objects.filter(schedule=schedule, due_at__lt=window_end)
            .select_related("job")
            .order_by("due_at")
        )
    finally:
        stop(processes)
        broker.flushdb()
        from django.db import connections

        connections.close_all()
        psql(f"DROP DATABASE IF EXISTS {DB_NAME}")

    expected = args.seconds // args.interval
    started = [run for run in runs if run.job is not None and run.job.started_at is not None]
    lateness = [(run.job.started_at - run.due_at).total_seconds() * 1000 for run in started]
    fire = [(run.fired_at - run.due_at).total_seconds() * 1000 for run in runs]
    p50, p99 = percentile(lateness, 0.5), percentile(lateness, 0.99)
    print(
        f"{len(started)} of {expected} due times ran; due to running: p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms, max {max(lateness):.1f} ms, mean {statistics.fmean(lateness):.1f} ms"
    )
    print(
        f"due to trigger (beat and control worker): p50 {percentile(fire, 0.5):.1f} ms, "
        f"p99 {percentile(fire, 0.99):.1f} ms"
    )
    print(
        json.dumps(
            {
                "due_times": expected,
                "jobs_started": len(started),
                "missed_due_times": sum(run.missed for run in runs) + expected - len(runs),
                "lateness_p50_ms": round(p50, 1),
                "lateness_p99_ms": round(p99, 1),
                "lateness_max_ms": round(max(lateness), 1),
                "trigger_p50_ms": round(percentile(fire, 0.5), 1),
                "trigger_p99_ms": round(percentile(fire, 0.99), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
