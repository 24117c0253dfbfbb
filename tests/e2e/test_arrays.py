"""An array of 50 tasks with parallelism 5 on real node agents and a real scheduler:
sampled in SQL every 10 ms, never more than the parallelism run; raising it to 10 mid-run
lets 10 run; tasks 3 and 7 fail, and a failed-only retry runs exactly those two again."""

import threading
import time

import pytest

from jobs.models import Job, JobExecution, JobStatus
from tests.jobs.making import submit
from tests.processes import raw_connection, wait_until

pytestmark = pytest.mark.e2e

RUNNING_SQL = """
SELECT count(*) FROM jobs_job
 WHERE array_parent_id = %s AND status IN ('reserved', 'running')
"""


class RunningSampler(threading.Thread):
    """The array's tasks holding a slot (placed or running), every 10 ms, with the most
    seen before and after the parallelism was raised."""

    def __init__(self, array_id: int):
        super().__init__(daemon=True)
        self.array_id = array_id
        self.stopped = threading.Event()
        self.raised = threading.Event()
        self.samples = 0
        self.most = {False: 0, True: 0}

    def run(self):
        with raw_connection() as conn:
            while not self.stopped.is_set():
                raised = self.raised.is_set()
                (running,) = conn.execute(RUNNING_SQL, [self.array_id]).fetchone()
                self.most[raised] = max(self.most[raised], running)
                self.samples += 1
                time.sleep(0.01)

    def stop(self):
        self.stopped.set()
        self.join(5)


def test_an_array_of_50_keeps_to_its_parallelism_and_reruns_only_its_failed_tasks(
    cluster, api, tmp_path
):
    cluster.start_node("node-a", cpu=4, memory_mb=4096, slots=16)
    cluster.start_node("node-b", cpu=4, memory_mb=4096, slots=16)
    cluster.start_scheduler()
    fixed = tmp_path / "fixed"
    script = "sleep 0.4; case $JOB_ARRAY_INDEX in 3|7) test -e " + str(fixed) + " || exit 1;; esac"
    array_id = submit(
        api,
        name="sweep",
        command=["sh", "-c", script],
        resources={"cpu": 0.25, "memory_mb": 64},
        array={"count": 50, "parallelism": 5},
    )
    sampler = RunningSampler(array_id)
    sampler.start()
    try:
        tasks = Job.objects.filter(array_parent_id=array_id)
        wait_until(
            lambda: tasks.filter(status=JobStatus.SUCCEEDED).count() >= 15,
            120,
            message="15 tasks to succeed",
        )
        sampler.raised.set()
        response = api.patch(f"/api/jobs/{array_id}/parallelism/", {"parallelism": 10})
        assert response.status_code == 200, response.json()
        wait_until(
            lambda: Job.objects.get(pk=array_id).status == JobStatus.FAILED,
            180,
            interval=0.2,
            message="the array to end failed",
        )
    finally:
        sampler.stop()

    assert sampler.samples > 100
    assert sampler.most[False] == 5  # reached, never passed
    assert sampler.most[True] == 10
    failed = tasks.filter(status=JobStatus.FAILED)
    assert sorted(failed.values_list("array_index", flat=True)) == [3, 7]
    assert api.get(f"/api/jobs/{array_id}/").json()["array_tasks"]["succeeded"] == 48

    fixed.touch()
    response = api.post(f"/api/jobs/{array_id}/retry/?failed_only=true")
    assert response.status_code == 200, response.json()
    wait_until(
        lambda: Job.objects.get(pk=array_id).status == JobStatus.SUCCEEDED,
        60,
        interval=0.2,
        message="the array to succeed",
    )
    second = JobExecution.objects.filter(job__array_parent_id=array_id, attempt=2)
    assert sorted(second.values_list("job__array_index", flat=True)) == [3, 7]
    assert JobExecution.objects.filter(job__array_parent_id=array_id).count() == 52
