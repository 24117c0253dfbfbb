"""Fixtures of the node agent's tests."""

import contextlib
import os
import signal
import subprocess

import pytest


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
