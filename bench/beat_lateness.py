"""Lateness of a one-second schedule among N hourly ones, and how long a minute boundary
takes to fire.

    .venv/bin/python bench/beat_lateness.py [--schedules 10000] [--seconds 60]
        [--interval 1] [--scheduler jobs.beat:ScheduleBeat]

Sets up its own database (scheduler_bench_beat) and Redis database (11, on the port of
CELERY_BROKER_URL, default 6379), creates N cron schedules `M * * * *` with M = i mod 60
(about N/60 due at every minute boundary) of one definition running `true`, starts real
beat (--scheduler; django_celery_beat.schedulers:DatabaseScheduler for the stock one),
control worker, scheduler and node agent processes, then one interval schedule. After
--seconds of due times (at least one minute boundary among them) it reports:

- the one-second schedule's lateness, from each due time to its job's submission
  (beat and the control worker), p50 and p99, and to the job `running` (the scheduler
  and the node too, which place the boundary's other jobs at the same moment);
- `boundary_fired_all_ms`: from each minute boundary until every schedule due then has
  its job submitted (the worst boundary), and how many of those due times got no job.

The last line printed is one JSON object of the figures.
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
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--interval", type=int, default=1)
    parser.add_argument("--scheduler", default="jobs.beat:ScheduleBeat")
    args = parser.parse_args()

    broker = BENCH.set_up()
    from django.db.models import Max
    from django.utils import timezone

    from accounts.models import Team
    from jobs.models import JobDefinition, JobSchedule, JobScheduleRun
    from jobs.schedules import schedule_create, schedule_pause, schedules_create_many
    from nodes.models import Node
    from resources.models import Queue

    team = Team.objects.create(name="Bench", slug="bench")
    definition = JobDefinition.objects.create(
        team=team,
        name="trivial",
        command=["true"],
        queue=Queue.objects.get(name="default"),
        cpu_millis=100,
        memory_mb=16,
    )
    created = time.monotonic()
    schedules_create_many(
        team=team,
        definition=definition,
        fields_list=[
            {"name": f"hourly-{i}", "cron": f"{i % 60} * * * *"} for i in range(args.schedules)
        ],
    )
    print(f"{args.schedules} schedules created in {time.monotonic() - created:.1f} s")
    manage = [sys.executable, str(ROOT / "manage.py")]
    celery = [sys.executable, "-m", "celery", "-A", "scheduler_site"]
    quiet = ["--loglevel=WARNING"]
    worker = ["--concurrency=2", "--pool=threads", "--without-gossip", "--without-mingle"]
    processes = [
        BENCH.start("scheduler", [*manage, "run_scheduler"]),
        *BENCH.start_node_agent(
            "node", [*manage, "run_node", "--name=bench", "--cpu=4", "--memory-mb=4096"]
        ),
        BENCH.start(
            "control",
            [*celery, "worker", "-Q", "control", "-n", "control@%h", *worker, *quiet],
        ),
        BENCH.start("beat", [*celery, "beat", "-S", args.scheduler, "--pidfile=", *quiet]),
    ]
    try:
        deadline = time.monotonic() + 60
        while not Node.objects.filter(name="bench").exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"the node agent did not register; logs in {BENCH.work}")
            time.sleep(0.2)
        time.sleep(3)  # workers connected and consuming, beat running
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
        time.sleep((window_end - timezone.now()).total_seconds() + 5)
        schedule_pause(schedule=schedule)
        runs = list(
            JobScheduleRun.objects.filter(schedule=schedule, due_at__lt=window_end)
            .select_related("job")
            .order_by("due_at")
        )
        boundaries = []
        moment = start_at.replace(second=0, microsecond=0) + timedelta(minutes=1)
        while moment < window_end:
            due = JobSchedule.objects.filter(
                cron=f"{moment.minute} * * * *", team=team, created_at__lt=start_at
            ).count()
            submitted = JobScheduleRun.objects.filter(
                due_at=moment, job__isnull=False, schedule__interval_seconds=None
            )
            last = submitted.aggregate(last=Max("job__created_at"))["last"]
            boundaries.append(
                {
                    "at": moment,
                    "due": due,
                    "submitted": submitted.count(),
                    "fired_all_ms": (last - moment).total_seconds() * 1000 if last else None,
                }
            )
            moment += timedelta(minutes=1)
    finally:
        stop(processes)
        broker.flushdb()
        from django.db import connections

        connections.close_all()
        BENCH.drop_database()

    expected = args.seconds // args.interval
    submitted = [run for run in runs if run.job is not None]
    started = [run for run in submitted if run.job.started_at is not None]
    lateness = [(run.job.created_at - run.due_at).total_seconds() * 1000 for run in submitted]
    running = [(run.job.started_at - run.due_at).total_seconds() * 1000 for run in started]
    p50, p99 = percentile(lateness, 0.5), percentile(lateness, 0.99)
    print(
        f"{len(submitted)} of {expected} due times submitted a job; due to submitted: "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(lateness):.1f} ms, "
        f"mean {statistics.fmean(lateness):.1f} ms"
    )
    print(
        f"due to running (scheduler and node too): p50 {percentile(running, 0.5):.1f} ms, "
        f"p99 {percentile(running, 0.99):.1f} ms"
    )
    for boundary in boundaries:
        print(
            f"boundary {boundary['at']:%H:%M}: {boundary['submitted']} of {boundary['due']} "
            f"due schedules submitted, the last {boundary['fired_all_ms']} ms after it"
        )
    fired_all = [b["fired_all_ms"] for b in boundaries]
    print(
        json.dumps(
            {
                "schedules": args.schedules,
                "scheduler": args.scheduler,
                "due_times": expected,
                "jobs_submitted": len(submitted),
                "missed_due_times": sum(run.missed for run in runs) + expected - len(runs),
                "lateness_p50_ms": round(p50, 1),
                "lateness_p99_ms": round(p99, 1),
                "lateness_max_ms": round(max(lateness), 1),
                "running_p50_ms": round(percentile(running, 0.5), 1),
                "running_p99_ms": round(percentile(running, 0.99), 1),
                "boundary_fired_all_ms": (
                    None if None in fired_all or not fired_all else round(max(fired_all), 1)
                ),
                "boundary_missed": sum(b["due"] - b["submitted"] for b in boundaries),
            }
        )
    )


if __name__ == "__main__":
    main()
