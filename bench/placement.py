"""Placements per second of one full scheduling cycle: snapshot, place, commit, publish.

    .venv/bin/python bench/placement.py

Sets itself up and cleans up after itself: creates the database `scheduler_bench`
(BENCH_DATABASE_URL), migrates it, and publishes to Redis database 13
(BENCH_BROKER_URL), flushing it before and after. For 100 and for 1,000 nodes of mixed
sizes, zones and GPUs, it submits 10,000 pending jobs of mixed sizes into four queues
(weights, a quota, a spread queue, some node selectors and GPU requests), times one
`run_cycle` and checks what it wrote. Each size runs three times on fresh data; the
median counts. The last line printed is one JSON object with the figures.
"""

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
    from accounts.models import Team
    from jobs.models import Job
    from nodes.models import Node
    from resources.models import DEFAULT_QUEUE_NAME, PlacementStrategy, Queue

    team = Team.objects.create(name="Bench", slug="bench")
    queues = [
        Queue.objects.get(name=DEFAULT_QUEUE_NAME),
        Queue.objects.create(name="batch", all_teams=True, weight=3),
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
    jobs = []
    for i in range(JOBS):
        roll = rng.random()
        jobs.append(
            Job(
                team=team,
                queue=queues[i % len(queues)],
                name=f"bench-{i}",
                command=["true"],
                cpu_millis=rng.choice([250, 500, 1000, 1000, 2000]),
                memory_mb=rng.choice([128, 256, 1024, 2048]),
                gpu=1 if roll < 0.03 else 0,
                node_selector={"zone": "b"} if 0.03 <= roll < 0.13 else {},
                priority=rng.choice([0, 0, 0, 5]),
            )
        )
    Job.objects.bulk_create(jobs, batch_size=2000)


def empty_tables() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE resources_allocation, jobs_jobexecution, jobs_job, nodes_node,"
            " accounts_team CASCADE"
        )
        cursor.execute("DELETE FROM resources_queue WHERE name <> 'default'")


def check(result, broker: redis.Redis) -> None:
    """What the cycle wrote agrees with what it says it placed."""
    from django.db.models import F

    from jobs.models import Job, JobExecution
    from nodes.models import Node
    from resources.models import Allocation

    assert JobExecution.objects.count() == result.placed
    assert Allocation.objects.count() == result.placed
    assert Job.objects.filter(status="reserved").count() == result.placed
    assert not Node.objects.filter(allocated_cpu_millis__gt=F("cpu_millis")).exists()
    published = sum(broker.llen(key) for key in broker.scan_iter("node.*"))
    assert published == result.placed, (published, result.placed)


def measure(node_count: int, broker: redis.Redis) -> dict:
    from django.conf import settings

    from jobs.scheduling.cycle import run_cycle

    runs = []
    for run in range(RUNS):
        empty_tables()
        broker.flushdb()
        fill(node_count, random.Random(SEED + run))
        started = time.perf_counter()
        result = run_cycle(batch_size=settings.SCHEDULER_BATCH_SIZE)
        seconds = time.perf_counter() - started
        check(result, broker)
        runs.append({"placed": result.placed, "seconds": seconds, "waiting": result.waiting})
        print(
            f"{node_count:>5} nodes, {JOBS} pending: placed {result.placed} in {seconds:.2f} s"
            f" ({result.placed / seconds:,.0f}/s), waiting {result.waiting}",
            flush=True,
        )
    median = statistics.median(r["placed"] / r["seconds"] for r in runs)
    return {"rate": round(median), "runs": runs}


def main() -> None:
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
                "pending_jobs": JOBS,
                "runs_per_size": RUNS,
                "cpu_count": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
