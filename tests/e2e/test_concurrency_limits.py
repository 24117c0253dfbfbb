"""A concurrency limit holds while two schedulers, three submitters and the nodes' freed
room all place jobs of its key at once, sampled in SQL every 10 ms."""

import threading
import time

import pytest

from jobs.models import ConcurrencyLimit, Job, JobStatus
from tests.processes import raw_connection, wait_until

pytestmark = pytest.mark.e2e

SUBMITTERS = 3
JOBS_EACH = 15
LIMIT = 2

# One statement, one snapshot: the key's jobs that hold a slot (placed or running).
HOLDING_SQL = """
SELECT count(*) FILTER (WHERE status IN ('reserved', 'running')),
       count(*) FILTER (WHERE status = 'running')
  FROM jobs_job WHERE concurrency_key = 'db'
"""


class SlotSampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.stopped = threading.Event()
        self.samples = 0
        self.most_holding = 0
        self.most_running = 0

    def run(self):
        with raw_connection() as conn:
            while not self.stopped.is_set():
                holding, running = conn.execute(HOLDING_SQL).fetchone()
                self.most_holding = max(self.most_holding, holding)
                self.most_running = max(self.most_running, running)
                self.samples += 1
                time.sleep(0.01)

    def stop(self):
        self.stopped.set()
        self.join(5)


def test_a_limit_of_two_holds_under_racing_schedulers_submitters_and_nodes(cluster, team):
    ConcurrencyLimit.objects.create(team=team, key="db", max_running=LIMIT)
    # Room for far more than two at once, so only the limit holds the key's jobs back.
    cluster.start_node("node-a", cpu=4, memory_mb=4096)
    cluster.start_node("node-b", cpu=4, memory_mb=4096)
    cluster.start_scheduler("scheduler-1")
    cluster.start_scheduler("scheduler-2", wait_leader=False)
    total = SUBMITTERS * JOBS_EACH
    sampler = SlotSampler()
    sampler.start()
    try:
        submitters = [
            cluster.start_submitter(
                f"submitter-{i}",
                team=team.slug,
                queues=["default"],
                count=JOBS_EACH,
                seed=i,
                max_pause=0.05,
                sleep=0.2,
                concurrency_key="db",
            )
            for i in range(SUBMITTERS)
        ]
        # Jobs of other keys and of none share the nodes meanwhile, unlimited.
        others = [
            cluster.start_submitter(
                "unkeyed", team=team.slug, queues=["default"], count=10, max_pause=0.05
            )
        ]
        for submitter in submitters + others:
            assert submitter.popen.wait(timeout=120) == 0, submitter.log()
        wait_until(
            lambda: Job.objects.filter(status=JobStatus.SUCCEEDED).count() == total + 10,
            240,
            interval=0.5,
            message=f"{total + 10} jobs to succeed",
        )
    finally:
        sampler.stop()

    assert sampler.samples > 100
    assert sampler.most_holding == LIMIT  # reached, never passed
    assert sampler.most_running == LIMIT
    assert not Job.objects.exclude(status=JobStatus.SUCCEEDED).exists()
