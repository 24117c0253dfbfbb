"""Which GPUs a job gets: its node's agent hands each job devices no other job of it holds,
in CUDA_VISIBLE_DEVICES, and hands them back when the job's processes are gone. The
executions are placed and claimed as a node agent's are, and run as real processes."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from jobs.agent.gpus import GpusHeld, NodeGpus, gpus
from nodes.models import Node
from tests.jobs.agent.conftest import run

# The agent's log shipping stores the output from a thread of its own, through the API.
pytestmark = pytest.mark.django_db(transaction=True)

SHOW = 'echo "$CUDA_VISIBLE_DEVICES|$JOB_GPU_IDS|$CUDA_DEVICE_ORDER"'


@pytest.fixture
def node_gpus(claim):
    """node-a with 3 GPUs, as its agent registered them."""
    Node.objects.filter(name="node-a").update(gpu=3)
    gpus.use(3)
    yield gpus
    gpus.use(0)


def test_jobs_running_at_once_see_devices_no_other_holds_and_ended_ones_give_them_back(
    claim, node_gpus, tmp_path
):
    # Each waits until all three run, so they hold their devices at the same time.
    barrier = (
        f"touch {tmp_path}/$JOB_ID; until [ $(ls {tmp_path} | wc -l) -ge 4 ]; do sleep 0.05; done"
    )
    executions = [
        claim(["sh", "-c", f"{barrier}; {SHOW}"], gpu=gpu, timeout_seconds=20) for gpu in (1, 2, 0)
    ]
    (tmp_path / "work").mkdir(exist_ok=True)  # the fourth entry: the agent's work directory
    with ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(run, executions))
    assert [o.exit_code for o in outcomes] == [0, 0, 0], [o.log_tail for o in outcomes]
    one, two, none = (o.log_tail.strip().split("|") for o in outcomes)
    assert none == ["", "", "PCI_BUS_ID"]  # no GPU: CUDA shows it none
    assert one[0] == one[1] and two[0] == two[1]
    held = [int(d) for d in one[0].split(",") + two[0].split(",")]
    assert sorted(held) == [0, 1, 2]
    # Each outcome names the devices its job saw, for the attempt's record.
    assert [",".join(map(str, o.gpu_ids)) for o in outcomes] == [one[0], two[0], ""]
    assert node_gpus.take(3, wait_seconds=0) == (0, 1, 2)  # all handed back


def test_a_job_waits_for_devices_an_ended_job_still_holds_and_is_not_started_past_the_wait():
    node = NodeGpus(2)
    held = node.take(2, wait_seconds=0)
    threading.Timer(0.3, node.give_back, args=[(held[1],)]).start()
    started = time.monotonic()
    assert node.take(1, wait_seconds=5) == (1,)
    assert time.monotonic() - started >= 0.25
    with pytest.raises(GpusHeld, match=r"1 of its 1 GPU\(s\) still held by ended jobs after 0.2 s"):
        node.take(1, wait_seconds=0.2)
    with pytest.raises(GpusHeld, match=r"it needs 3 GPU\(s\), and this node has 2"):
        node.take(3, wait_seconds=0)


def test_a_gpu_job_whose_devices_stay_held_is_reported_not_started(claim, node_gpus, settings):
    settings.NODE_GPU_WAIT_SECONDS = 0.2
    held = node_gpus.take(3, wait_seconds=0)
    try:
        outcome = run(claim(["sh", "-c", "echo ran"], gpu=1))
    finally:
        node_gpus.give_back(held)
    assert (outcome.exit_code, outcome.error) == (
        None,
        "could not start: 1 of its 1 GPU(s) still held by ended jobs after 0.2 s",
    )
