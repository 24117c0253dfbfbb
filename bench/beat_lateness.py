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
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.harness import Bench, percentile, stop  # noqa: E402

BENCH = Bench("beat", 11)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--interval", type=int, default=1)
    args = parser.parse_args()

    broker = BENCH.set_up()
    from django.utils import timezone

    from accounts.models import Team
    from jobs.models import JobDefinition, JobScheduleRun
    from jobs.schedules import schedule_create, schedule_pause
    from nodes.models import Node
    from resources.models import Queue

    team = Team.objects.create(name="Bench", slug="bench")
    manage = [sys.executable, str(ROOT / "manage.py")]
    celery = [sys.executable, "-m", "celery", "-A", "scheduler_site"]
    quiet = ["--loglevel=WARNING"]
    worker = ["--concurrency=2", "--pool=threads", "--without-gossip", "--without-mingle"]
    processes = [
        BENCH.start("scheduler", [*manage, "run_scheduler"]),
        BENCH.start("node", [*manage, "run_node", "--name=bench", "--cpu=4", "--memory-mb=4096"]),
        BENCH.start(
            "control",
            [*celery, "worker", "-Q", "control", "-n", "control@%h", *worker, *quiet],
        ),
        BENCH.start(
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
                raise SystemExit(f"the node agent did not register; logs in {BENCH.work}")
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
        BENCH.drop_database()

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
