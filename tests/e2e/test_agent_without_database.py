"""A node agent holds no database password: it reaches the control plane through the web
API with its node key, and refuses to start with a database configured."""

import os
import subprocess
import sys

import pytest

from jobs.models import Job, JobStatus
from nodes.models import Node, NodeStatus
from nodes.services import node_credentials_revoke
from tests.processes import BASE_DIR, wait_until

pytestmark = pytest.mark.e2e


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        items = f.read().split(b"\0")
    return dict(item.decode().split("=", 1) for item in items if b"=" in item)


def test_the_agent_runs_jobs_with_no_database_in_its_environment_or_settings(cluster, api):
    node = cluster.start_node("node-a", cpu=1)
    cluster.start_scheduler()
    environ = environ_of(node.popen.pid)
    assert "DATABASE_URL" not in environ
    assert environ["SCHEDULER_API_URL"].startswith("http://127.0.0.1:")
    assert environ["NODE_KEY"] not in node.log()  # the key is never logged
    # The settings the agent's process reads, as `manage.py run_node` makes them.
    settings_of_agent = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.argv = ['manage.py', 'run_node']; import django; django.setup(); "
            "from django.conf import settings; "
            "print(sorted({d['ENGINE'] for d in settings.DATABASES.values()}))",
        ],
        env=environ,
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert settings_of_agent.strip() == "['django.db.backends.dummy']"

    response = api.post("/api/jobs/", {"name": "t", "command": ["echo", "hi"]}, format="json")
    job_id = response.json()["id"]
    wait_until(
        lambda: Job.objects.get(pk=job_id).status == JobStatus.SUCCEEDED, 30, message="the job"
    )


@pytest.mark.parametrize(
    ("extra", "refusal"),
    [
        ({"DATABASE_URL": "postgres://x@127.0.0.1/x"}, "unset DATABASE_URL"),
        ({"NODE_KEY": ""}, "Set NODE_KEY"),
        ({"NODE_CGROUPS": "sometimes"}, "NODE_CGROUPS must be one of auto, off, required"),
        ({"NODE_JOB_PIDS_MAX": "-1"}, "NODE_JOB_PIDS_MAX must be 0 (no limit) or more"),
    ],
)
def test_the_agent_refuses_to_start_with_a_database_or_without_a_key(
    cluster, tmp_path, extra, refusal
):
    env = {**cluster.node_env("node-a"), **extra}
    result = subprocess.run(
        [sys.executable, "manage.py", "run_node", "--name=node-a", "--cpu=1"],
        env=env,
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert refusal in result.stderr


def test_the_agent_refuses_to_start_on_a_kernel_without_pidfd_open(cluster):
    # As on a kernel older than Linux 5.3, where os.pidfd_open fails or Python lacks it.
    run_node = (
        "import os, runpy, sys; del os.pidfd_open; "
        "sys.argv = ['manage.py', 'run_node', '--name=node-a', '--cpu=1']; "
        "runpy.run_path('manage.py', run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", run_node],
        env=cluster.node_env("node-a"),
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "needs Linux 5.3 or later" in result.stderr
    assert not Node.objects.filter(name="node-a").exists()  # refused before registering


def test_a_key_file_others_may_read_is_refused(cluster, tmp_path):
    env = cluster.node_env("node-a")
    key_file = tmp_path / "node.key"
    key_file.write_text(env.pop("NODE_KEY"))
    os.chmod(key_file, 0o644)
    env["NODE_KEY_FILE"] = str(key_file)
    argv = [sys.executable, "manage.py", "run_node", "--name=node-a", "--cpu=1"]
    result = subprocess.run(argv, env=env, cwd=BASE_DIR, capture_output=True, text=True)
    assert result.returncode != 0 and "readable by others" in result.stderr
    os.chmod(key_file, 0o600)
    node = cluster._spawn_with("node-a", argv, env)
    cluster.wait_node_ready("node-a", node)


def test_a_revoked_key_stops_the_agent_and_its_job_runs_again_elsewhere(cluster, api, tmp_path):
    marker = tmp_path / "runs.txt"
    cluster.start_maintenance()
    node_a = cluster.start_node("node-a", cpu=1)
    cluster.start_scheduler()
    response = api.post(
        "/api/jobs/",
        {
            "name": "t",
            "command": [
                "sh",
                "-c",
                f'echo "$NODE_NAME" >> {marker}; [ "$NODE_NAME" = node-b ] || sleep 15',
            ],
        },
        format="json",
    )
    job_id = response.json()["id"]
    wait_until(lambda: marker.exists(), 30, message="the job to start on node-a")
    node_credentials_revoke(node_name="node-a")
    cluster.start_node("node-b", cpu=1)

    wait_until(lambda: not node_a.alive, 30, message="node-a's agent to stop")
    assert "refused this node's key" in node_a.log()
    wait_until(
        lambda: Job.objects.get(pk=job_id).status == JobStatus.SUCCEEDED,
        60,
        message="the job to run again on node-b",
    )
    assert marker.read_text().split() == ["node-a", "node-b"]
    assert Node.objects.get(name="node-a").status == NodeStatus.OFFLINE
