"""Following a running job's log through the web process as deployed (gunicorn with
threads), while a real node agent runs it and ships its output: lines arrive as the job
prints them and the answer ends when the job does, also when the agent's disk is one the
web process cannot read (it is deleted while the job runs)."""

import shutil
import time
from pathlib import Path

import pytest
import requests

from accounts.services import api_token_issue
from jobs.models import ExecutionStatus, JobExecution
from tests.jobs.making import submit
from tests.processes import free_port, wait_until

pytestmark = pytest.mark.e2e

# Five lines, a second apart, each with the time it was printed.
ONE_LINE_A_SECOND = 'for i in 1 2 3 4 5; do echo "line $i $(date +%s.%N)"; sleep 1; done'


def follow(port: int, user, job_id: int):
    """Yields (line, time received) from ?follow=true until the answer ends."""
    key = api_token_issue(user=user, name="follow").key
    response = requests.get(
        f"http://127.0.0.1:{port}/api/jobs/{job_id}/logs/",
        params={"follow": "true"},
        headers={"Authorization": f"Token {key}"},
        stream=True,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    pending = b""
    for piece in response.iter_content(chunk_size=None):
        received = time.time()
        pending += piece
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode(), received
    assert pending == b""


def wait_execution(job_id: int) -> JobExecution:
    return wait_until(
        lambda: JobExecution.objects.filter(job_id=job_id).first(), 30, message="its attempt"
    )


def assert_followed_as_printed(lines, job_id, prefix=()):
    """The job's lines, in order, each received after its print; the first before the
    job printed its last (so it was not held until the end); the answer ended with the
    attempt."""
    execution = JobExecution.objects.get(job_id=job_id)
    assert execution.status == ExecutionStatus.SUCCEEDED
    texts = [line for line, _ in lines]
    assert texts[: len(prefix)] == list(prefix)
    printed = [(line.split()[:2], float(line.split()[2])) for line in texts[len(prefix) :]]
    assert [words for words, _ in printed] == [["line", str(i)] for i in range(1, 6)]
    received = [at for _, at in lines[len(prefix) :]]
    delays = [got - at for got, (_, at) in zip(received, printed, strict=True)]
    print("print-to-receipt delays (s):", " ".join(f"{d:.2f}" for d in delays))
    assert all(delay >= 0 for delay in delays)
    assert received[0] < printed[-1][1]


def test_following_a_running_job_gets_each_line_as_printed_and_ends_with_it(cluster, api, member):
    cluster.start_node("node-a", cpu=1)
    cluster.start_scheduler()
    port = free_port()
    cluster.start_web(port)
    job_id = submit(api, command=["sh", "-c", ONE_LINE_A_SECOND])
    wait_execution(job_id)
    lines = list(follow(port, member, job_id))
    assert_followed_as_printed(lines, job_id)


def test_following_works_when_the_web_process_cannot_read_the_nodes_disk(
    cluster, api, member, tmp_path
):
    node_disk = tmp_path / "node-disk"
    cluster.env |= {
        "NODE_WORK_DIR": str(node_disk / "work"),
        "JOB_LOG_DIR": str(node_disk / "logs"),
    }
    cluster.start_node("node-a", cpu=1)
    cluster.start_scheduler()
    port = free_port()
    web_disk = tmp_path / "web-disk"
    cluster.start_web(
        port, NODE_WORK_DIR=str(web_disk / "work"), JOB_LOG_DIR=str(web_disk / "logs")
    )
    # A first line longer than the tail the database kept before logs were shipped.
    wide = "w" * 6000
    job_id = submit(api, command=["sh", "-c", f"echo {wide}; {ONE_LINE_A_SECOND}"])
    execution = wait_execution(job_id)
    wait_until(lambda: execution.log_chunks.exists(), 30, message="its first lines to be shipped")
    # The node's disk goes away from under the web process: only the database is left.
    shutil.rmtree(node_disk)
    lines = list(follow(port, member, job_id))
    assert_followed_as_printed(lines, job_id, prefix=[wide])
    execution.refresh_from_db()
    assert not Path(execution.log_path).exists()
    whole = requests.get(
        f"http://127.0.0.1:{port}/api/jobs/{job_id}/logs/",
        headers={"Authorization": f"Token {api_token_issue(user=member, name='w').key}"},
        timeout=30,
    ).text
    assert whole == "".join(f"{line}\n" for line, _ in lines)


def test_a_follow_ends_when_its_attempts_agent_is_killed_and_keeps_what_was_shipped(
    cluster, api, member
):
    cluster.start_maintenance()
    node = cluster.start_node("node-a", cpu=1)
    cluster.start_scheduler()
    port = free_port()
    cluster.start_web(port)
    job_id = submit(api, command=["sh", "-c", "echo one; echo two; sleep 300"])
    execution = wait_execution(job_id)
    wait_until(lambda: execution.log_chunks.exists(), 30, message="its first lines to be shipped")
    lines = follow(port, member, job_id)
    assert [next(lines)[0], next(lines)[0]] == ["one", "two"]
    node.kill()  # SIGKILL: its job dies with it, and nothing more is shipped
    # The follow ends once the node is found lost and the attempt with it.
    assert list(lines) == []
    execution.refresh_from_db()
    assert execution.status not in (ExecutionStatus.RESERVED, ExecutionStatus.RUNNING)
