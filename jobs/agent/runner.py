"""Runs one execution on this node and says how it ended.

The job runs in a process group of its own, so a timeout, a cancel or the memory limit
kills everything it started, and, where the host allows, in a control group of its own
(`cgroups`), which the kernel holds to the job's memory and CPU, and which keeps even the
processes that leave the job's process group: they are killed when the job ends. It
gets a working directory of its own and the job's environment on top of a minimal base;
the agent's own environment, with its database URL and secrets, is not passed on. Its
stdout and stderr stream through a pipe into a log file capped at JOB_LOG_MAX_BYTES (made
when the first byte comes), and the last JOB_LOG_TAIL_BYTES are kept for the database;
the same output is shipped to the control plane as it comes (`log_shipping`).
The agent's guard (`guard`) kills the job's group if the agent dies.

`running` is this agent's registry of what it runs: the heartbeat reports its tokens,
cancels and the memory watch act on it.
"""

import contextlib
import errno
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from django.conf import settings

from ..models import JobKind
from .cgroups import JobCgroup, cgroups
from .gpus import GpusHeld, gpus, visible_devices
from .log_shipping import AttemptLog, shipper
from .sampling import resident_mb_by_group

logger = logging.getLogger(__name__)

# How long the end of a job's output is copied once its processes are killed.
DRAIN_SECONDS = 1.0
# Passed through from the agent so ordinary commands behave; nothing else is.
BASE_ENV_NAMES = ("PATH", "LANG", "LC_ALL", "TZ")
# util-linux's prlimit, which sets a job's CPU time limit and execs it (Debian's
# util-linux is essential: every node has it). Found on the agent's PATH, not the job's.
PRLIMIT = shutil.which("prlimit")
# After its limit, a process gets SIGXCPU (whose default is to end it); one that
# handles it gets this many more CPU seconds before SIGKILL.
CPU_TIME_LIMIT_GRACE_SECONDS = 1


@dataclass(frozen=True)
class ExecutionToRun:
    """All the agent needs to run an execution, as its claim answered it
    (`POST /api/agent/claim/`): the agent reads no model and no database."""

    execution_id: int
    token: str
    attempt: int
    job_id: int
    name: str
    kind: str
    command: list
    callable: str
    env: dict
    parameters: dict
    cpu_millis: int
    memory_mb: int
    gpu: int
    timeout_seconds: int | None
    cpu_time_limit_seconds: int | None
    task_index: int
    tasks: int
    task_nodes: str  # comma-separated, in task order

    @classmethod
    def of(cls, answer: dict) -> "ExecutionToRun":
        return cls(**{name: answer[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Outcome:
    exit_code: int | None
    error: str
    log_path: str
    log_tail: str
    cancelled: bool = False
    preempted: bool = False
    gpu_ids: tuple[int, ...] = ()  # the node's devices it ran on


class TrackedExecution:
    """An execution this agent has taken on, from before its claim to after its finish."""

    def __init__(self, token: str):
        self.token = token
        self.memory_limit_mb = 0  # known once claimed; 0 means no limit
        self.pgid: int | None = None
        self.started_at = 0.0  # time.monotonic() at its start
        self.kill_reason = ""  # why the agent killed it, if it did
        self.cancelled = False
        self.preempted = False
        self.grace_seconds = settings.JOB_KILL_GRACE_SECONDS
        # Failed over while the node was unreachable: its outcome is not reported.
        self.taken_away = False
        self.lock = threading.Lock()

    def kill(
        self,
        reason: str,
        *,
        cancelled: bool = False,
        preempted: bool = False,
        grace_seconds: float | None = None,
        taken_away: bool = False,
    ) -> None:
        """SIGTERM its group, then SIGKILL after the grace (JOB_KILL_GRACE_SECONDS, or
        `grace_seconds`: a preempted job's queue says how long it gets)."""
        with self.lock:
            self.taken_away = self.taken_away or taken_away
            if self.kill_reason:
                return
            self.kill_reason, self.cancelled, self.preempted = reason, cancelled, preempted
            if grace_seconds is not None:
                self.grace_seconds = grace_seconds
            pgid = self.pgid
        if pgid is not None:
            kill_process_group(pgid, self.grace_seconds)

    def started(self, pgid: int) -> None:
        """Record the process group; a kill asked for before the start takes effect now."""
        with self.lock:
            self.pgid, self.started_at = pgid, time.monotonic()
            pending = self.kill_reason
        if pending:
            kill_process_group(pgid, self.grace_seconds)


class RunningRegistry:
    def __init__(self):
        self._lock = threading.Lock()
        self._items: dict[str, TrackedExecution] = {}

    def track(self, token: str) -> "TrackedExecution | None":
        """Start tracking `token`; None when this agent already runs it (a duplicate)."""
        with self._lock:
            if token in self._items:
                return None
            tracked = self._items[token] = TrackedExecution(token)
        return tracked

    def untrack(self, tracked: "TrackedExecution") -> None:
        with self._lock:
            if self._items.get(tracked.token) is tracked:
                del self._items[tracked.token]

    def tokens(self) -> list[str]:
        with self._lock:
            return sorted(self._items)

    def process_groups(self) -> set[int]:
        """The process groups of the executions that have started."""
        with self._lock:
            return {t.pgid for t in self._items.values() if t.pgid is not None}

    def cancel(self, token: str) -> None:
        with self._lock:
            tracked = self._items.get(token)
        if tracked is not None:
            logger.info("cancelling execution token=%s", token)
            threading.Thread(
                target=tracked.kill, args=("cancelled",), kwargs={"cancelled": True}
            ).start()

    def preempt(self, token: str, *, grace_seconds: float, preempted_by: int | None) -> None:
        with self._lock:
            tracked = self._items.get(token)
        if tracked is not None and not tracked.kill_reason:
            logger.info(
                "preempting execution token=%s preempted_by=%s grace_seconds=%s",
                token,
                preempted_by,
                grace_seconds,
            )
            threading.Thread(
                target=tracked.kill,
                args=(f"preempted by job {preempted_by}",),
                kwargs={"preempted": True, "grace_seconds": grace_seconds},
            ).start()

    def take_away(self, token: str) -> None:
        """The control plane failed this execution over while the node was unreachable
        (its token is fenced): stop it, and report nothing for it."""
        with self._lock:
            tracked = self._items.get(token)
        if tracked is not None:
            logger.warning("execution taken away, failed over elsewhere: stopping token=%s", token)
            threading.Thread(
                target=tracked.kill,
                args=("taken away: failed over while the node was unreachable",),
                kwargs={"taken_away": True},
            ).start()

    def kill_all(self, reason: str) -> None:
        """Kill every job this agent runs (its node is being failed over: they run again
        elsewhere)."""
        with self._lock:
            tracked = list(self._items.values())
        for entry in tracked:
            threading.Thread(target=entry.kill, args=(reason,)).start()

    def enforce_memory_limits(self) -> None:
        """Kill the groups over their memory limit. A group is first looked at once it has
        run for a poll interval: reading /proc costs the same for one group as for all,
        and an agent running many short jobs would otherwise read it for nothing."""
        since = time.monotonic() - settings.NODE_MEMORY_POLL_SECONDS
        with self._lock:
            watched = [
                t
                for t in self._items.values()
                if t.pgid is not None and t.started_at <= since and not t.kill_reason
            ]
        if not watched:
            return
        resident = resident_mb_by_group()
        for tracked in watched:
            used = resident.get(tracked.pgid, 0.0)
            if tracked.memory_limit_mb and used > tracked.memory_limit_mb:
                logger.warning(
                    "execution over its memory limit token=%s resident_mb=%.0f limit_mb=%s",
                    tracked.token,
                    used,
                    tracked.memory_limit_mb,
                )
                threading.Thread(
                    target=tracked.kill,
                    args=(f"exceeded memory limit of {tracked.memory_limit_mb} MB",),
                ).start()


running = RunningRegistry()


def job_argv(execution: ExecutionToRun) -> list[str]:
    job = execution
    if job.kind == JobKind.CALLABLE:
        return [sys.executable, "-m", "jobs.agent.callable_runner", job.callable]
    return list(job.command)


def agent_identity(node_name: str) -> str:
    """What marks the processes of one agent's jobs: its node and its work directory, so
    that agents of other clusters on the same host, with the same node name, differ."""
    return f"{node_name}:{Path(settings.NODE_WORK_DIR).resolve()}"


def job_environment(execution: ExecutionToRun, node_name: str, workdir: Path) -> dict[str, str]:
    job = execution
    env = {name: os.environ[name] for name in BASE_ENV_NAMES if name in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = str(workdir)
    env.update({str(k): str(v) for k, v in job.env.items()})
    if job.kind == JobKind.CALLABLE:
        env["PYTHONPATH"] = str(settings.BASE_DIR)
    env.update(
        JOB_ID=str(job.job_id),
        JOB_ATTEMPT=str(execution.attempt),
        JOB_TOKEN=execution.token,
        JOB_PARAMETERS=json.dumps(job.parameters),
        NODE_NAME=node_name,
        SCHEDULER_AGENT=agent_identity(node_name),
        JOB_CPU_MILLIS=str(job.cpu_millis),
        JOB_MEMORY_MB=str(job.memory_mb),
        JOB_GPU=str(job.gpu),
        # CUDA's numbering, the order of nvidia-smi and of JOB_GPU_IDS (set with them).
        CUDA_DEVICE_ORDER="PCI_BUS_ID",
        JOB_TASK_INDEX=str(execution.task_index),
        JOB_TASK_COUNT=str(execution.tasks),
        JOB_TASK_NODES=execution.task_nodes,
    )
    return env


class JobOutput:
    """The job's output as it comes: handed to the log shipper, copied to its log file up
    to a cap (the file is made when the first byte comes, so a job that prints nothing
    leaves none), and its latest tail kept."""

    def __init__(self, log_path: Path, max_bytes: int, tail_bytes: int, shipped: AttemptLog):
        self.log_path, self.shipped = log_path, shipped
        self.max_bytes, self.tail_bytes = max_bytes, tail_bytes
        self.tail = bytearray()
        self.written = 0
        self.dropped = 0
        self._file = None

    def write(self, chunk: bytes) -> None:
        self.shipped.write(chunk)
        if self._file is None:
            self._file = self.log_path.open("wb")
        room = self.max_bytes - self.written
        if room > 0:
            self._file.write(chunk[:room])
            self.written += min(room, len(chunk))
        self.dropped += max(0, len(chunk) - max(room, 0))
        self.tail += chunk
        del self.tail[: -self.tail_bytes]

    def note(self, text: str) -> None:
        """A line of the agent's own about the job, in brackets, on a line of its own."""
        starts_line = not self.tail or self.tail.endswith(b"\n")
        self.write(f"{'' if starts_line else chr(10)}[{text}]\n".encode())

    def close(self) -> str:
        """Close the log file; its path, or "" when the job printed nothing."""
        if self._file is None:
            return ""
        with self._file as log:
            if self.dropped:
                log.write(f"\n[log truncated: {self.dropped} more bytes not kept]\n".encode())
        return str(self.log_path)

    def tail_text(self) -> str:
        return bytes(self.tail).decode("utf-8", errors="replace")


def kill_process_group(pgid: int, grace_seconds: float):
    """SIGTERM the group, give it `grace_seconds`, then SIGKILL whatever is left."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if grace_seconds:
        threading.Event().wait(grace_seconds)
    _signal_group(pgid, signal.SIGKILL)


def cpu_time_limited(argv: list[str], seconds: int) -> list[str]:
    """`argv` run with RLIMIT_CPU set: each of its processes (each child inherits the
    limit, and counts its own time) gets SIGXCPU after `seconds` of CPU time, and
    SIGKILL CPU_TIME_LIMIT_GRACE_SECONDS later. prlimit sets it and execs `argv` in its
    place, so nothing runs before the limit holds (a `preexec_fn` would make subprocess
    fork the whole agent rather than vfork it; see `cgroups.JobCgroup.command`)."""
    hard = seconds + CPU_TIME_LIMIT_GRACE_SECONDS
    return [PRLIMIT, f"--cpu={seconds}:{hard}", "--", *argv]


def describe_exit(returncode: int) -> str:
    if returncode == 0:
        return ""
    if returncode < 0:
        return f"killed by signal {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


def run_job(*, execution: ExecutionToRun, node_name: str, tracked: TrackedExecution) -> Outcome:
    workdir = Path(settings.NODE_WORK_DIR) / node_name / execution.token
    log_dir = Path(settings.JOB_LOG_DIR)
    log_path = log_dir / f"{execution.token}.log"
    try:
        workdir.mkdir()
    except FileNotFoundError:  # the node's first job, or its directory was deleted
        workdir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # left by an agent that died while it ran
        pass
    log_dir.mkdir(parents=True, exist_ok=True)
    env = job_environment(execution, node_name, workdir)
    argv = job_argv(execution)
    groups = cgroups.groups  # held here: a cold shutdown clears it while jobs still end
    # Undone in reverse as the job ends: what its group still holds killed, then its GPUs
    # free, then its log stored (before its outcome is reported, so a follower sees it all).
    with contextlib.ExitStack() as ending:
        shipped = shipper.open(execution.execution_id)
        ending.callback(shipper.close, shipped)
        try:
            devices = (
                gpus.take(execution.gpu, settings.NODE_GPU_WAIT_SECONDS) if execution.gpu else ()
            )
        except GpusHeld as exc:
            workdir.rmdir()
            return _not_started(f"could not start: {exc}", log_path, shipped)
        ending.callback(gpus.give_back, devices)
        env.update(
            CUDA_VISIBLE_DEVICES=visible_devices(devices), JOB_GPU_IDS=visible_devices(devices)
        )
        group = None
        if groups is not None:
            group = groups.take(memory_mb=execution.memory_mb, cpu_millis=execution.cpu_millis)
            ending.callback(groups.give_back, group)
        # Without a control group, the agent samples the job's memory
        # (`enforce_memory_limits`).
        tracked.memory_limit_mb = 0 if group else execution.memory_mb
        outcome = _run_process(
            execution, node_name, tracked, workdir, log_path, env, argv, shipped, group
        )
        return replace(outcome, gpu_ids=devices)


def _not_started(error: str, log_path: Path, shipped: AttemptLog) -> Outcome:
    """The outcome of an attempt whose process never started, its reason as its log."""
    log_path.write_text(f"{error}\n")
    shipped.write(f"{error}\n".encode())
    return Outcome(None, error, str(log_path), f"{error}\n")


def _run_process(
    execution: ExecutionToRun,
    node_name: str,
    tracked: TrackedExecution,
    workdir: Path,
    log_path: Path,
    env: dict[str, str],
    argv: list[str],
    shipped: AttemptLog,
    group: JobCgroup | None,
) -> Outcome:
    job = execution
    command, cpu_limit = argv, job.cpu_time_limit_seconds
    if cpu_limit is not None and PRLIMIT is not None:
        command = cpu_time_limited(command, cpu_limit)
    if group is not None:
        command = group.command(command)
    try:
        if cpu_limit is not None and PRLIMIT is None:
            error = "this node cannot limit CPU time: prlimit (util-linux) is not installed"
            return _not_started(error, log_path, shipped)
        try:
            if command is not argv:  # a wrapper would start, and fail only then
                _check_executable(argv[0], env["PATH"], workdir)  # as Popen would
            proc = subprocess.Popen(
                command,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            missing = isinstance(exc, FileNotFoundError) and os.sep not in argv[0]
            reason = "no such executable on PATH" if missing else exc.strerror or str(exc)
            return _not_started(f"could not start {argv[0]!r}: {reason}", log_path, shipped)
        tracked.started(proc.pid)
        logger.info(
            "execution started job=%s attempt=%s node=%s token=%s pid=%s",
            job.job_id,
            execution.attempt,
            node_name,
            execution.token,
            proc.pid,
        )
        output = JobOutput(
            log_path, settings.JOB_LOG_MAX_BYTES, settings.JOB_LOG_TAIL_BYTES, shipped
        )
        try:
            exit_code, timed_out = _follow(proc, output, job.timeout_seconds, group)
            oom_kills = group.oom_kills() if group else 0
            pids_refused = group.pids_refused() if group else 0
            if oom_kills and exit_code == 0:
                output.note(
                    f"the kernel killed {oom_kills} process(es) of this job for going past "
                    f"its memory limit of {job.memory_mb} MB"
                )
            if pids_refused:
                output.note(
                    f"the kernel refused this job {pids_refused} new process(es) or "
                    f"thread(s) at its limit of {group.pids_max} (NODE_JOB_PIDS_MAX)"
                )
        finally:
            log_path_kept = output.close()
    finally:
        try:
            workdir.rmdir()  # what jobs leave in it is the exception
        except OSError:
            shutil.rmtree(workdir, ignore_errors=True)
    if tracked.kill_reason:
        error = tracked.kill_reason
    elif timed_out:
        error = f"timed out after {job.timeout_seconds} s"
    elif cpu_limit is not None and exit_code == -signal.SIGXCPU:
        error = f"exceeded its CPU time limit of {cpu_limit} s"
    elif oom_kills and exit_code != 0:
        error = f"exceeded memory limit of {job.memory_mb} MB"
    elif pids_refused and exit_code != 0:
        error = f"{describe_exit(exit_code)} after reaching its limit of {group.pids_max} processes"
    else:
        error = describe_exit(exit_code)
    return Outcome(
        exit_code, error, log_path_kept, output.tail_text(), tracked.cancelled, tracked.preempted
    )


def _check_executable(program: str, path: str, cwd: Path) -> None:
    """Raise what Popen raises for a program that cannot be run, for a job that a shell
    starts (to enter its cgroup), so its attempt fails the same way: not started."""
    if os.sep in program:
        program = str(cwd / program)  # an absolute path stays as it is
    if shutil.which(program, path=path) is not None:
        return
    if os.sep in program and os.path.exists(program):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def _follow(
    proc: subprocess.Popen, output: JobOutput, timeout: int | None, group: JobCgroup | None
) -> tuple[int, bool]:
    """Copy the job's output as it comes until its process ends, killing its group at
    the timeout (SIGTERM, then SIGKILL after JOB_KILL_GRACE_SECONDS), then whatever it
    left running in its process group and its control group, which closes the pipe;
    returns its exit code and whether it timed out. One thread does it all: it waits on the
    pipe and on the process (a pidfd) at once, so no thread is started and no wait is
    polled."""
    out = proc.stdout.fileno()
    timed_out = False
    try:
        with _pidfd(proc.pid) as exited:
            poller = select.poll()
            poller.register(out, select.POLLIN)
            poller.register(exited, select.POLLIN)
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready = dict(poller.poll(None if wait is None else wait * 1000))
                if out in ready:
                    if chunk := os.read(out, 65536):
                        output.write(chunk)
                    else:  # it closed its output, and may run on
                        poller.unregister(out)
                if exited in ready:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    if timed_out:  # its grace is over
                        _signal_group(proc.pid, signal.SIGKILL)
                        deadline = None
                    else:
                        timed_out = True
                        _signal_group(proc.pid, signal.SIGTERM)
                        deadline = time.monotonic() + settings.JOB_KILL_GRACE_SECONDS
        exit_code = proc.wait()
    finally:  # also when the output could not be written: the job does not outlive this
        kill_process_group(proc.pid, 0)
        if group is not None:
            group.kill()
    _drain(out, output)
    proc.stdout.close()
    return exit_code, timed_out


def _drain(out: int, output: JobOutput) -> None:
    """Copy what is left in the pipe once the job's processes are killed. A process that
    left the job's process group where there is no control group to find it (setsid) may
    still hold the pipe open: the copy stops after DRAIN_SECONDS, so it holds no slot."""
    deadline = time.monotonic() + DRAIN_SECONDS
    poller = select.poll()
    poller.register(out, select.POLLIN)
    while (left := deadline - time.monotonic()) > 0 and poller.poll(left * 1000):
        if not (chunk := os.read(out, 65536)):
            return
        output.write(chunk)
    output.note("output not followed further: a process outside the job's group holds it")


def pidfd_supported() -> bool:
    """Whether this kernel has pidfd_open (Linux 5.3 or later), which the agent waits on
    its jobs through (`_follow`)."""
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


@contextlib.contextmanager
def _pidfd(pid: int):
    fd = os.pidfd_open(pid)
    try:
        yield fd
    finally:
        os.close(fd)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)
