"""A bare Celery app for bench/throughput.py: the same command, no platform around it."""

import os
import subprocess

import redis
from celery import Celery

BROKER_URL = os.environ["CELERY_BROKER_URL"]
COUNTER = "bench:bare:done"

app = Celery("bare", broker=BROKER_URL)
app.conf.update(
    task_acks_late=False,  # as the platform's workers (scheduler_site.settings)
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_default_queue="bare",
    accept_content=["json"],
    task_serializer="json",
)
# Where finished tasks are counted: the broker, or (with RabbitMQ) a Redis database.
_redis = redis.Redis.from_url(os.environ.get("BENCH_COUNTER_URL", BROKER_URL))


@app.task(name="bench.run_command")
def run_command(argv: list[str]) -> None:
    subprocess.run(argv, start_new_session=True, stdout=subprocess.DEVNULL, check=False)
    _redis.incr(COUNTER)
