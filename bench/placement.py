"""Placements per second of one full scheduling cycle: snapshot, place, commit, publish.

    .venv/bin/python bench/placement.py [--teams N]

Sets itself up and cleans up after itself: creates the database `scheduler_bench`
(BENCH_DATABASE_URL), migrates it, and publishes to Redis database 13
(BENCH_BROKER_URL), flushing it before and after. For 100 and for 1,000 nodes of mixed
sizes, zones and GPUs, it submits 10,000 pending jobs of mixed sizes into four queues
(weights, a quota, a spread queue, some node selectors and GPU requests), times one
`run_cycle` and checks what it wrote.

The mixed run, on 1,000 nodes, has the cycle do everything at once. About 40 % of the
CPU already runs 1-CPU jobs with time limits, half of them preemptible. Of the 10,000
pending jobs, 10 % are gangs of 2 to 8 tasks, most have time limits, some are
preemptible, and six in ten have a higher priority than the running ones. They want
about twice the free room, so the first that finds none gets a reservation, every later
one is checked against it (backfill: on its nodes, only what would not delay it), and
high-priority jobs preempt.
The cycle (placement, reservation, preemption, commit, publish) is timed, and its
placements per second count each gang task. The check adds: no gang partly placed, a
reservation made, and preemptions started.

With `--teams N` the jobs (and the running ones) belong to N teams in turn, which share
the queues: the cycle then reads each team's jobs in a queue apart and orders the teams
of a queue by what they hold.

Each run is made three times on fresh data; the median counts. The last line printed
is one JSON object with the figures.
"""

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/scheduler_bench"
)
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/13")
os.environ.update(
    DJANGO_SETTINGS_MODULE="scheduler_site.settings",
    DATABASE_URL=DATABASE_URL,
    CELERY_BROKER_URL=BROKER_URL,
    LOG_LEVEL="WARNING",
)
os.environ.setdefault("SECRET_KEY", "bench-only-not-secret")

import django  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402

JOBS = 10_000
RUNS = 3
# The teams the jobs are spread over (`--teams`): the cycle reads each team's jobs in a
# queue apart, and orders the teams of a queue by what they hold.
TEAMS = 1
SEED = 20_26


def admin_conninfo() -> str:
    """The same server, its maintenance database: to create and drop the bench one."""
    return urlunsplit(urlsplit(DATABASE_URL)._replace(path="/postgres"))


def bench_database_name() -> str:
    return urlsplit(DATABASE_URL).path.lstrip("/")


def recreate_database() -> None:
    with psycopg.connect(admin_conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{bench_database_name()}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{bench_database_name()}"')


def drop_database() -> None:
    with psycopg.connect(admin_conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{bench_database_name()}" WITH (FORCE)')


def fill(node_count: int, rng: random.Random) -> None:
    """A cluster of `node_count` nodes with about a fifth more room than the jobs need."""
    from jobs.models import Job

    teams, queues = cluster(node_count)
    jobs = [
        pending_job(teams[i % len(teams)], queues[i % len(queues)], i, rng) for i in range(JOBS)
    ]
    Job.objects.bulk_create(jobs, batch_size=2000)


def pending_job(team, queue, i: int, rng: random.Random, *, mixed: bool = False):
    """The i-th pending job: of mixed sizes, a few wanting a GPU or zone b. In the mixed
    run, also a gang one time in ten, most with a time limit, some preemptible, and more
    of higher priority."""
    from jobs.models import Job

    roll = rng.random()
    gang = mixed and rng.random() < 0.10
    job = Job(
        team=team,
        queue=queue,
        name=f"bench-{i}",
        command=["true"],
        cpu_millis=rng.choice([250, 500, 1000, 1000, 2000]),
        memory_mb=rng.choice([128, 256, 1024, 2048]),
        gpu=1 if roll < 0.03 and not gang else 0,
        node_selector={"zone": "b"} if 0.03 <= roll < 0.13 else {},
        priority=rng.choice([0, 0, 0, 0, 5, 5, 5, 5, 10, 10] if mixed else [0, 0, 0, 5]),
    )
    if mixed:
        job.tasks = rng.randint(2, 8) if gang else 1
        job.preemptible = rng.random() < 0.2
        job.timeout_seconds = rng.choice([None, 60, 300, 900, 900, 3600])
    return job


def cluster(node_count: int):
    """The bench's TEAMS teams, and four queues they share on `node_count` nodes of four
    shapes with about a fifth more room in all than 10,000 jobs of 0.9 CPU want."""
    from accounts.models import Team
    from nodes.models import Node
    from resources.models import DEFAULT_QUEUE_NAME, PlacementStrategy, Queue

    teams = [Team.objects.create(name=f"Bench {i}", slug=f"bench-{i}") for i in range(TEAMS)]
    queues = [
        Queue.objects.get(name=DEFAULT_QUEUE_NAME),
        Queue.objects.create(name="batch", all_teams=True, weight=3, preemptible_default=True),
        Queue.objects.create(
            name="services", all_teams=True, weight=1, strategy=PlacementStrategy.SPREAD
        ),
        Queue.objects.create(name="capped", all_teams=True, weight=2, quota_cpu_millis=500_000),
    ]
    # Mean request about 0.9 CPU: 10,000 jobs want about 9,000 CPU.
    cores_per_node = max(8, round(9_000 * 1.2 / node_count))
    shapes = [
        (cores_per_node, cores_per_node * 4096, 0),
        (cores_per_node * 2, cores_per_node * 8192, 0),
        (cores_per_node // 2, cores_per_node * 2048, 0),
        (cores_per_node, cores_per_node * 4096, 4),
    ]
    nodes = []
    for i in range(node_count):
        cpu, memory, gpu = shapes[i % len(shapes)]
        nodes.append(
            Node(
                name=f"node-{i:04d}",
                cpu_millis=cpu * 1000,
                memory_mb=memory,
                gpu=gpu,
                labels={"zone": "abc"[i % 3]},
            )
        )
    Node.objects.bulk_create(nodes)
    return teams, queues


# The mixed run: how much of the CPU already runs when the timed cycle starts.
RUNNING_SHARE = 0.4


def fill_mixed(node_count: int, rng: random.Random, broker: redis.Redis) -> int:
    """The cluster, about 40 % of its CPU running 1-CPU jobs with time limits (half of
    them preemptible), and 10,000 pending jobs of the mixed run. Returns the number of
    executions running."""
    from django.db.models import Sum

    from jobs.models import Job
    from jobs.scheduling.cycle import run_cycle
    from jobs.services.executions import execution_claim
    from nodes.models import Node

    teams, queues = cluster(node_count)
    cores = Node.objects.aggregate(cpu=Sum("cpu_millis"))["cpu"] // 1000
    running = [
        Job(
            team=teams[i % len(teams)],
            queue=queues[i % 3],  # not the capped one: all of them start
            name=f"running-{i}",
            command=["true"],
            cpu_millis=1000,
            memory_mb=1024,
            priority=0,
            preemptible=i % 2 == 0,
            timeout_seconds=rng.choice([600, 1200, 1800, 3600]),
        )
        for i in range(int(cores * RUNNING_SHARE))
    ]
    Job.objects.bulk_create(running, batch_size=2000)
    placements = run_cycle(batch_size=len(running)).placements
    assert len(placements) == len(running), (len(placements), len(running))
    node_ids = dict(Node.objects.values_list("name", "id"))
    for token, node_name in placements:  # each claimed as its node would
        assert execution_claim(token=token, node_id=node_ids[node_name]) is not None
    broker.flushdb()

    jobs = [
        pending_job(teams[i % len(teams)], queues[i % len(queues)], i, rng, mixed=True)
        for i in range(JOBS)
    ]
    Job.objects.bulk_create(jobs, batch_size=2000)
    return len(running)


def empty_tables() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE resources_allocation, jobs_jobexecution, jobs_job, nodes_node,"
            " accounts_team CASCADE"
        )
        cursor.execute("DELETE FROM resources_queue WHERE name <> 'default'")


def check(result, broker: redis.Redis, running: int = 0) -> None:
    """What the cycle wrote agrees with what it says it placed (beside the `running`
    executions there before): every task of a placed gang and none of one left waiting,
    no node holding more than it has, one message per placement."""
    from django.db.models import Count, F, Q, Sum

    from jobs.models import Job, JobExecution
    from nodes.models import Node
    from resources.models import Allocation

    assert JobExecution.objects.count() == running + result.placed
    assert Allocation.objects.count() == running + result.placed
    reserved = Job.objects.filter(status="reserved")
    assert (reserved.aggregate(tasks=Sum("tasks"))["tasks"] or 0) == result.placed
    placed_tasks = Count("executions", filter=Q(executions__status="reserved"))
    partly = Job.objects.annotate(placed=placed_tasks).exclude(placed=0).exclude(placed=F("tasks"))
    assert not partly.exists(), list(partly.values_list("id", "tasks", "placed")[:5])
    assert not JobExecution.objects.filter(status="reserved", job__status="pending").exists()
    assert not Node.objects.filter(
        Q(allocated_cpu_millis__gt=F("cpu_millis"))
        | Q(allocated_memory_mb__gt=F("memory_mb"))
        | Q(allocated_gpu__gt=F("gpu"))
    ).exists()
    queues = [key for key in broker.scan_iter("node.*") if not key.endswith(b".stops")]
    published = sum(broker.llen(key) for key in queues)
    assert published == result.placed, (published, result.placed)


def measure(node_count: int, broker: redis.Redis, *, mixed: bool = False) -> dict:
    from django.conf import settings

    from jobs.models import Job
    from jobs.scheduling.cycle import run_cycle

    runs = []
    for run in range(RUNS):
        empty_tables()
        broker.flushdb()
        rng = random.Random(SEED + run)
        if mixed:
            running = fill_mixed(node_count, rng, broker)
        else:
            fill(node_count, rng)
            running = 0
        started = time.perf_counter()
        result = run_cycle(batch_size=settings.SCHEDULER_BATCH_SIZE)
        seconds = time.perf_counter() - started
        check(result, broker, running)
        gangs = Job.objects.filter(status="reserved", tasks__gt=1).count()
        if mixed:
            assert result.waiting.get("reservation") == 1, result.waiting
            assert result.preempted, "no preemption started"
        runs.append(
            {
                "placed": result.placed,
                "seconds": seconds,
                "gangs_placed": gangs,
                "preempted": result.preempted,
                "waiting": result.waiting,
            }
        )
        what = f"{node_count:>5} nodes, {JOBS} pending" + (
            f" ({running} running; mixed)" if mixed else ""
        )
        print(
            f"{what}: placed {result.placed} in {seconds:.2f} s"
            f" ({result.placed / seconds:,.0f}/s; {gangs} gangs), preempting"
            f" {result.preempted}, waiting {result.waiting}",
            flush=True,
        )
    median = statistics.median(r["placed"] / r["seconds"] for r in runs)
    return {"rate": round(median), "runs": runs}


def main() -> None:
    global TEAMS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teams", type=int, default=1, help="teams the jobs are spread over")
    TEAMS = parser.parse_args().teams
    broker = redis.Redis.from_url(BROKER_URL)
    recreate_database()
    try:
        django.setup()
        from django.core.management import call_command
        from django.db import connections

        call_command("migrate", verbosity=0)
        broker.flushdb()
        small = measure(100, broker)
        large = measure(1000, broker)
        mixed = measure(1000, broker, mixed=True)
        connections.close_all()
    finally:
        broker.flushdb()
        broker.close()
        drop_database()
    print(
        json.dumps(
            {
                "placements_per_second_100_nodes": small["rate"],
                "placements_per_second_1000_nodes": large["rate"],
                "placements_per_second_mixed_1000_nodes": mixed["rate"],
                "pending_jobs": JOBS,
                "teams": TEAMS,
                "runs_per_size": RUNS,
                "cpu_count": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
