"""Flower sees every execution a node runs, with its job's name and outcome: those whose
message it received, and those a success started on the room it freed, without any
message. In persistent mode it still lists them after a restart."""

import ast
import base64
import http.client
import json
import signal

import pytest

from jobs.models import Job, JobExecution, JobStatus
from resources.routing import EXECUTION_TASK
from scheduler_site.celery import app as celery_app
from tests.processes import free_port, wait_until

pytestmark = pytest.mark.e2e

BURST = 100
CREDENTIALS = "flower:not-secret"


class Flower:
    """A Flower process of the cluster, read through its HTTP API with basic auth."""

    def __init__(self, cluster, db):
        self.cluster, self.db = cluster, db
        self.port = free_port()
        self.process = None

    def start(self, *, expect_workers: tuple[str, ...]) -> None:
        self.process = self.cluster.start_flower(port=self.port, db=self.db, basic_auth=CREDENTIALS)
        # Events sent before Flower binds its queue never reach it: wait until it has
        # heard every node agent's heartbeat.
        wait_until(
            lambda: all(
                f'worker="{name}@' in self.get("/metrics", text=True) for name in expect_workers
            ),
            30,
            interval=0.3,
            message="Flower to hear the node agents",
        )

    def stop(self) -> None:
        self.process.signal_group(signal.SIGTERM)
        assert self.process.popen.wait(timeout=15) == 0, self.process.log()[-3000:]

    def get(self, path: str, *, text: bool = False):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        auth = base64.b64encode(CREDENTIALS.encode()).decode()
        try:
            connection.request("GET", path, headers={"Authorization": f"Basic {auth}"})
            response = connection.getresponse()
            assert response.status == 200, (response.status, response.read())
            body = response.read().decode()
        except (ConnectionError, TimeoutError):
            if not self.process.alive:
                raise AssertionError(f"Flower exited:\n{self.process.log()[-3000:]}") from None
            return "" if text else {}
        finally:
            connection.close()
        return body if text else json.loads(body)

    def executions(self) -> dict[str, dict]:
        """The run task's tasks that ran an execution, by token (each token at most once)."""
        found: dict[str, dict] = {}
        tasks = self.get(f"/api/tasks?taskname={EXECUTION_TASK}")
        for task in tasks.values():
            result = ast.literal_eval(task["result"]) if task["result"] else {}
            if result.get("outcome") == "dropped":
                continue
            token = ast.literal_eval(task["kwargs"])["token"]
            assert token not in found, (token, found.get(token), task)
            found[token] = {**task, "result": result}
        return found


@pytest.fixture
def flower(cluster, tmp_path):
    return Flower(cluster, tmp_path / "flower.db")


def submit(api, name: str, command: list[str], **spec) -> int:
    response = api.post(
        "/api/jobs/",
        {"name": name, "command": command, "resources": {"cpu": 1}, **spec},
        format="json",
    )
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def test_flower_lists_every_execution_with_its_outcome_and_keeps_them_across_a_restart(
    cluster, api, flower
):
    cluster.start_node("node-a", cpu=2, slots=4)
    cluster.start_node("node-b", cpu=2, slots=4)
    flower.start(expect_workers=("node-a", "node-b"))
    cluster.start_scheduler()

    # Four CPUs for a burst of short jobs: after the first few, each starts on the room
    # another's success freed, in that one's thread, without a message.
    ids = {submit(api, f"burst-{i}", ["sleep", "0.2"]): f"burst-{i}" for i in range(BURST)}
    doomed = submit(api, "doomed", ["sh", "-c", "exit 3"], max_retries=0)
    wait_until(
        lambda: (
            Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).count() == BURST
            and Job.objects.get(pk=doomed).status == JobStatus.FAILED
        ),
        90,
        interval=0.2,
        message="the burst to finish",
    )
    executions = {
        e.token: e
        for e in JobExecution.objects.filter(job_id__in=[*ids, doomed]).select_related("node")
    }
    assert len(executions) == BURST + 1

    listed = wait_until(
        lambda: (
            (found := flower.executions()).keys() == executions.keys()
            and all(task["state"] in ("SUCCESS", "FAILURE") for task in found.values())
            and found
        ),
        30,
        interval=0.5,
        message="Flower to list every execution with its outcome",
    )

    def check(listed):
        for token, execution in executions.items():
            task = listed[token]
            assert task["worker"].startswith(f"{execution.node.name}@"), task
            assert task["result"]["job"] == execution.job_id
            if execution.job_id == doomed:
                assert task["state"] == "FAILURE"
                assert task["exception"] == "exit code 3"
                assert task["result"] == {
                    "job": doomed,
                    "name": "doomed",
                    "outcome": "failed",
                    "exit_code": 3,
                    "error": "exit code 3",
                }
            else:
                assert task["state"] == "SUCCESS"
                assert task["result"] == {
                    "job": execution.job_id,
                    "name": ids[execution.job_id],
                    "outcome": "succeeded",
                    "exit_code": 0,
                }
                assert 0.2 <= task["runtime"] < 5  # this execution's alone

    check(listed)
    # Many started on freed room (how many depends on how fast the scheduler takes the
    # arrivals, so on the machine's load: from 42 to most of them): their task's parent
    # is the execution whose room they took, on the same node.
    by_id = {task["uuid"]: task for task in listed.values()}
    on_freed_room = [task for task in listed.values() if task["parent_id"]]
    assert len(on_freed_room) >= BURST // 10, len(on_freed_room)
    for task in on_freed_room:
        assert by_id[task["parent_id"]]["worker"] == task["worker"]

    # Stopped (SIGTERM), Flower saves its state; started again, it lists the same, from
    # its file alone: events sent while it was down never reach it.
    flower.stop()
    flower.start(expect_workers=("node-a", "node-b"))
    restored = flower.executions()
    assert restored.keys() == executions.keys()
    check(restored)


def test_flower_shows_a_failed_run_as_failed_a_cancelled_one_as_revoked_and_a_duplicate_dropped(
    cluster, api, flower
):
    cluster.start_node("node-a", cpu=1, slots=2)
    flower.start(expect_workers=("node-a",))
    cluster.start_scheduler()

    failing = submit(api, "failing", ["sh", "-c", "exit 3"], max_retries=0)
    wait_until(lambda: Job.objects.get(pk=failing).status == JobStatus.FAILED, 30, message="fail")
    long = submit(api, "long", ["sleep", "30"])
    wait_until(lambda: Job.objects.get(pk=long).status == JobStatus.RUNNING, 30, message="start")
    assert api.post(f"/api/jobs/{long}/cancel/").status_code == 200
    wait_until(lambda: Job.objects.get(pk=long).status == JobStatus.CANCELLED, 30, message="cancel")
    # The failed execution's message once more: the token is claimed, so nothing runs.
    failed_token = Job.objects.get(pk=failing).last_execution.token
    celery_app.send_task(EXECUTION_TASK, kwargs={"token": failed_token}, queue="node.node-a")

    def by_outcome():
        tasks = flower.get(f"/api/tasks?taskname={EXECUTION_TASK}").values()
        return {ast.literal_eval(t["result"])["outcome"]: t for t in tasks if t["result"]}

    tasks = wait_until(
        lambda: (found := by_outcome()).keys() == {"failed", "cancelled", "dropped"} and found,
        30,
        interval=0.5,
        message="Flower to list the three outcomes",
    )
    # Each came by message (the scheduler's, or ours): no parent.
    assert [t["parent_id"] for t in tasks.values()] == [None, None, None]
    assert tasks["failed"]["state"] == "FAILURE"
    assert tasks["failed"]["exception"] == "exit code 3"
    assert ast.literal_eval(tasks["failed"]["result"])["name"] == "failing"
    assert tasks["cancelled"]["state"] == "REVOKED"
    assert ast.literal_eval(tasks["cancelled"]["result"]) == {
        "job": long,
        "name": "long",
        "outcome": "cancelled",
        "exit_code": -15,
        "error": "cancelled",
    }
    assert tasks["dropped"]["state"] == "SUCCESS"
    assert ast.literal_eval(tasks["dropped"]["kwargs"]) == {"token": failed_token}
