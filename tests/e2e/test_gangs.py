"""Gangs with real agents: three tasks over three 1-CPU nodes start together, each with
its index and the gang's node list; when one task's agent is killed, the other two are
stopped and the gang runs again, whole, as its next attempt."""

import subprocess

import pytest

from jobs.models import ExecutionStatus, Job, JobExecution, JobStatus
from tests.processes import wait_until

pytestmark = pytest.mark.e2e


def gang_command(workdir) -> list[str]:
    """Writes its task's view to workdir/task-ATTEMPT-INDEX; the first attempt then
    sleeps (so it is surely running when an agent is killed), the next ends at once."""
    return [
        "sh",
        "-c",
        f'printf "%s\\n%s\\n%s\\n%s\\n" "$JOB_TASK_INDEX" "$JOB_TASK_COUNT" "$JOB_TASK_NODES" '
        f'"$NODE_NAME" > {workdir}/task-$JOB_ATTEMPT-$JOB_TASK_INDEX.tmp; '
        f"mv {workdir}/task-$JOB_ATTEMPT-$JOB_TASK_INDEX.tmp "
        f"{workdir}/task-$JOB_ATTEMPT-$JOB_TASK_INDEX; "
        'if [ "$JOB_ATTEMPT" = 1 ]; then sleep 300; fi',
    ]


def task_views(workdir, attempt: int) -> dict[int, list[str]]:
    return {
        index: (workdir / f"task-{attempt}-{index}").read_text().split("\n")[:4]
        for index in range(3)
        if (workdir / f"task-{attempt}-{index}").exists()
    }


def test_a_gang_starts_together_and_retries_whole_when_a_task_loses_its_node(
    cluster, api, tmp_path
):
    workdir = tmp_path / "gang"
    workdir.mkdir()
    cluster.start_maintenance()
    agents = {
        name: cluster.start_node(name, cpu=1, address=f"{name}.cluster.test")
        for name in ("node-a", "node-b", "node-c")
    }
    cluster.start_scheduler()
    response = api.post(
        "/api/jobs/",
        {"name": "gang", "command": gang_command(workdir), "tasks": 3, "resources": {"cpu": 1}},
        format="json",
    )
    assert response.status_code == 201, response.json()
    job_id = response.json()["id"]

    wait_until(lambda: len(task_views(workdir, 1)) == 3, 60, message="three tasks running")
    first = list(JobExecution.objects.filter(job_id=job_id, attempt=1).order_by("task_index"))
    assert [e.task_index for e in first] == [0, 1, 2]
    assert all(e.status == ExecutionStatus.RUNNING for e in first)
    starts = [e.started_at for e in first]
    assert (max(starts) - min(starts)).total_seconds() < 1, starts
    addresses = ",".join(f"{e.node.name}.cluster.test" for e in first)
    assert {e.node.name for e in first} == set(agents)
    for index, (task_index, count, nodes, node_name) in task_views(workdir, 1).items():
        assert (task_index, count, nodes) == (str(index), "3", addresses)
        assert node_name == first[index].node.name

    victim = first[1]
    agents[victim.node.name].kill()  # SIGKILL: its task dies with it, unreported
    cluster.start_node("node-d", cpu=1, address="node-d.cluster.test")

    wait_until(
        lambda: Job.objects.get(pk=job_id).status == JobStatus.SUCCEEDED,
        90,
        message="the gang to succeed on its next attempt",
    )
    job = Job.objects.get(pk=job_id)
    assert job.attempts == 2  # one attempt counted for the whole gang
    ended = {e.task_index: e for e in JobExecution.objects.filter(job_id=job_id, attempt=1)}
    assert ended[1].status == ExecutionStatus.LOST
    for index in (0, 2):  # stopped through their agents, not lost
        assert ended[index].status == ExecutionStatus.CANCELLED
        assert ended[index].stop_requested_at is not None
    second = list(JobExecution.objects.filter(job_id=job_id, attempt=2).order_by("task_index"))
    assert [e.status for e in second] == [ExecutionStatus.SUCCEEDED] * 3
    assert victim.node.name not in {e.node.name for e in second}
    addresses = ",".join(f"{e.node.name}.cluster.test" for e in second)
    assert [view[:3] for view in task_views(workdir, 2).values()] == [
        [str(i), "3", addresses] for i in range(3)
    ]
    # No process of the first attempt is left, on the surviving nodes or the dead one.
    wait_until(
        lambda: not subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True).stdout,
        30,
        message="the first attempt's processes to be gone",
    )
