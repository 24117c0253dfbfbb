"""Runs one execution's command on this node and says how it ended.

The command gets its own process group (so a timeout or a cancel kills everything it
started), a working directory of its own, the job's environment on top of a minimal
base (the agent's own environment, with its database URL and secrets, is not passed
on), and a log file that stdout and stderr stream to.
"""

import contextlib
import logging
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from .models import JobExecution

logger = logging.getLogger(__name__)

# Passed through from the agent so ordinary commands behave; nothing else is.
BASE_ENV_NAMES = ("PATH", "LANG", "LC_ALL", "TZ")


@dataclass(frozen=True)
class Outcome:
    exit_code: int | None
    error: str
    log_path: str
    log_tail: str


def job_environment(execution: JobExecution, node_name: str, workdir: Path) -> dict[str, str]:
    job = execution.job
    env = {name: os.environ[name] for name in BASE_ENV_NAMES if name in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = str(workdir)
    env.update({str(k): str(v) for k, v in job.env.items()})
    env.update(
        JOB_ID=str(job.id),
        JOB_ATTEMPT=str(execution.attempt),
        JOB_TOKEN=execution.token,
        NODE_NAME=node_name,
        JOB_CPU_MILLIS=str(job.cpu_millis),
        JOB_MEMORY_MB=str(job.memory_mb),
        JOB_GPU=str(job.gpu),
    )
    return env


def read_tail(path: Path, size: int) -> str:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - size))
        return f.read().decode("utf-8", errors="replace")


def kill_process_group(pgid: int, grace_seconds: float, proc: subprocess.Popen | None = None):
    """SIGTERM the group, give it `grace_seconds`, then SIGKILL whatever is left."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_seconds)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def describe_exit(returncode: int) -> str:
    if returncode == 0:
        return ""
    if returncode < 0:
        return f"killed by signal {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


def run_command(*, execution: JobExecution, node_name: str) -> Outcome:
    job = execution.job
    workdir = Path(settings.NODE_WORK_DIR) / node_name / execution.token
    log_dir = Path(settings.JOB_LOG_DIR)
    log_path = log_dir / f"{execution.token}.log"
    workdir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    error = ""
    exit_code: int | None = None
    try:
        with log_path.open("wb") as log:
            try:
                proc = subprocess.Popen(
                    job.command,
                    cwd=workdir,
                    env=job_environment(execution, node_name, workdir),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                error = f"could not start {job.command[0]!r}: {exc.strerror or exc}"
                log.write(f"{error}\n".encode())
            else:
                logger.info(
                    "execution started job=%s attempt=%s node=%s token=%s pid=%s",
                    job.id,
                    execution.attempt,
                    node_name,
                    execution.token,
                    proc.pid,
                )
                try:
                    exit_code = proc.wait(timeout=job.timeout_seconds)
                    error = describe_exit(exit_code)
                except subprocess.TimeoutExpired:
                    kill_process_group(proc.pid, settings.JOB_KILL_GRACE_SECONDS, proc)
                    exit_code = proc.wait()
                    error = f"timed out after {job.timeout_seconds} s"
                # Whatever the command left running in its group goes with it.
                kill_process_group(proc.pid, 0)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return Outcome(
        exit_code=exit_code,
        error=error,
        log_path=str(log_path),
        log_tail=read_tail(log_path, settings.JOB_LOG_TAIL_BYTES),
    )
