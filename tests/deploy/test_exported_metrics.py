"""The list deploy/ is checked against is what the platform really exports: GET /metrics
and the scheduler process's own metrics (`run_scheduler --metrics-port`)."""

import re

import pytest
from prometheus_client import generate_latest

from jobs.models import Job
from jobs.scheduling.metrics import SchedulerMetrics
from nodes.models import Node
from resources.models import DEFAULT_QUEUE_NAME, Queue
from tests.deploy.metrics import EXPORTED_METRICS, HISTOGRAMS

_SERIES = re.compile(r"^(scheduler_[a-z_]+)", re.M)


def names(text: str) -> set[str]:
    exported = set()
    for name in _SERIES.findall(text):
        base = re.sub(r"_(bucket|sum|count|created)$", "", name)
        exported.add(base if base in HISTOGRAMS else name)
    return exported


@pytest.mark.django_db
def test_every_listed_metric_is_exported_by_the_web_or_the_scheduler(client, team):
    # A node with a GPU and a heartbeat's usage, a quota and a pending job, so that no
    # family is empty.
    Node.objects.create(
        name="node-a",
        cpu_millis=2000,
        memory_mb=1024,
        gpu=1,
        used_cpu_millis=500,
        used_memory_mb=64,
    )
    queue = Queue.objects.get(name=DEFAULT_QUEUE_NAME)
    queue.quota_cpu_millis = 4000
    queue.save()
    Job.objects.create(team=team, name="j", command=["true"], queue=queue)
    web = client.get("/metrics")
    assert web.status_code == 200
    scheduler = generate_latest(SchedulerMetrics(is_leader=lambda: True).registry)

    exported = names(web.content.decode()) | names(scheduler.decode())

    assert set(EXPORTED_METRICS) <= exported, set(EXPORTED_METRICS) - exported
