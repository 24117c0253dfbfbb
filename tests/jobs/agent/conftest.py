"""The node agent's code under test talks to the control plane as in production, through
`jobs.agent.client`, but its requests are served in this process by the Django test
client, as node-a's: no web server, and the test's own database."""

import contextlib
import os
import signal
import subprocess
import threading
from urllib.parse import urlsplit

import pytest
import requests
from django.db import connections
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from rest_framework.test import APIClient

from jobs.agent import client
from jobs.agent.runner import ExecutionToRun, TrackedExecution, run_job
from jobs.api.agent import ExecutionToRunSerializer
from jobs.models import Job, JobExecution
from jobs.scheduling.cycle import place_pending_jobs
from jobs.selectors import execution_task_nodes
from jobs.services.executions import execution_claim
from nodes.models import Node, NodeCredential
from resources.models import DEFAULT_QUEUE_NAME, Queue


class InProcessAdapter(BaseAdapter):
    """Serves the agent's requests with the Django test client, as `node_name`'s agent."""

    def __init__(self, node_name: str):
        super().__init__()
        self.node_name = node_name

    def send(self, request, **kwargs):
        try:
            return self._serve(request)
        finally:
            # The agent's own threads (its success writer, its heartbeat loop) get a
            # connection each here: closed with the request, as no request handler of
            # theirs would, so none outlives its thread and holds the test database open.
            if threading.current_thread() is not threading.main_thread():
                connections.close_all()

    def _serve(self, request):
        # As `node_credential_verify` gives it: with its node's id, found per request
        # (the tests register the node after the agent is set up).
        credential = NodeCredential(node_name=self.node_name)
        credential.node_id = (
            Node.objects.filter(name=self.node_name).values_list("id", flat=True).first()
        )
        api = APIClient()  # one per request: the agent's threads call at once
        api.force_authenticate(token=credential)
        answer = api.generic(
            request.method,
            urlsplit(request.url).path,
            request.body or b"",
            content_type="application/json",
        )
        response = requests.Response()
        response.status_code = answer.status_code
        response._content = answer.content
        response.headers = CaseInsensitiveDict(answer.headers.items())
        response.url, response.request = request.url, request
        return response

    def close(self):
        pass


@pytest.fixture(autouse=True)
def control_plane():
    control_plane = client.ControlPlane(base_url="http://testserver", key="not-used")
    control_plane.session.mount("http://", InProcessAdapter("node-a"))
    client.use_control_plane(control_plane)
    yield control_plane
    control_plane.stop()
    client.use_control_plane(None)


def to_run(execution) -> ExecutionToRun:
    """A claimed execution as its claim's answer gives it to the agent (one read from the
    database gets its gang's node list here, as the claim does)."""
    if not hasattr(execution, "task_nodes"):
        execution.task_nodes = execution_task_nodes(execution=execution)
    return ExecutionToRun.of(ExecutionToRunSerializer(execution).data)


@pytest.fixture
def claim(team, settings, tmp_path):
    """Claims a new job's execution on node-a, whose agent works under tmp_path."""
    settings.NODE_WORK_DIR = tmp_path / "work"
    settings.JOB_LOG_DIR = tmp_path / "logs"
    settings.JOB_KILL_GRACE_SECONDS = 0.5
    node = Node.objects.create(name="node-a", cpu_millis=4000, memory_mb=4096)
    queue = Queue.objects.get(name=DEFAULT_QUEUE_NAME)

    def claim(command: list[str], **spec) -> JobExecution:
        Job.objects.create(team=team, queue=queue, name="j", command=command, **spec)
        (token,) = place_pending_jobs(batch_size=10).tokens
        return execution_claim(token=token, node_id=node.id)

    return claim


def run(execution, tracked=None):
    """Run a claimed execution as node-a's agent does; how it ended."""
    tracked = tracked or TrackedExecution(execution.token)
    return run_job(execution=to_run(execution), node_name="node-a", tracked=tracked)


class Groups:
    """Process groups started like jobs (a session of their own), always killed at the end."""

    def __init__(self):
        self.started: list[subprocess.Popen] = []

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(
            argv,
            env={"PATH": os.environ["PATH"], **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            start_new_session=True,
            text=True,
        )
        self.started.append(proc)
        return proc

    def start_job_like(self, identity: str) -> tuple[subprocess.Popen, int]:
        """A shell and a `sleep` it started, marked as an agent's job is; returns the
        shell and the pid of the sleep."""
        proc = self.start(["sh", "-c", "sleep 60 & echo $!; wait"], {"SCHEDULER_AGENT": identity})
        return proc, int(proc.stdout.readline())

    def kill_all(self):
        for proc in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            proc.stdout.close()


@pytest.fixture
def groups():
    groups = Groups()
    yield groups
    groups.kill_all()
