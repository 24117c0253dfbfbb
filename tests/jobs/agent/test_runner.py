"""run_job on real processes: how a job ended, its log (capped, with its tail kept), the
environment it sees, and the process group a timeout or a cancel kills. The executions
are placed and claimed as a node agent's are."""

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from jobs.agent.runner import TrackedExecution, agent_identity, running
from tests.jobs.agent.conftest import run
from tests.processes import gone, processes_matching, wait_until

# The agent's log shipping stores the output from a thread of its own, through the API.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    ("script", "exit_code", "error"),
    [
        ("echo out; echo err >&2", 0, ""),
        ("echo out; echo err >&2; exit 3", 3, "exit code 3"),
        ("echo out; echo err >&2; kill -USR1 $$", -signal.SIGUSR1, "killed by signal SIGUSR1"),
    ],
)
def test_a_job_ends_with_its_exit_code_and_its_output_logged(
    claim, tmp_path, script, exit_code, error
):
    execution = claim(["sh", "-c", script])
    outcome = run(execution)
    assert (outcome.exit_code, outcome.error, outcome.cancelled) == (exit_code, error, False)
    log_path = tmp_path / "logs" / f"{execution.token}.log"
    assert outcome.log_path == str(log_path)
    assert log_path.read_text() == "out\nerr\n"
    assert outcome.log_tail == "out\nerr\n"
    # Its working directory is the job's alone, and gone once it ends.
    assert not (tmp_path / "work" / "node-a" / execution.token).exists()


def test_a_job_that_prints_nothing_leaves_no_log_file(claim, tmp_path):
    execution = claim(["true"])
    outcome = run(execution)
    assert (outcome.exit_code, outcome.error, outcome.log_path, outcome.log_tail) == (0, "", "", "")
    assert not (tmp_path / "logs" / f"{execution.token}.log").exists()
    assert not (tmp_path / "work" / "node-a" / execution.token).exists()


def test_a_job_ends_with_its_process_though_a_child_it_left_holds_its_output(claim):
    # The child keeps the output pipe open: the job still ends when its process does,
    # and the child is killed with its group.
    execution = claim(["sh", "-c", "sleep 60 & echo $!"])
    started = time.monotonic()
    outcome = run(execution)
    assert time.monotonic() - started < 5
    assert (outcome.exit_code, outcome.error) == (0, "")
    child = int(Path(outcome.log_path).read_text())
    wait_until(lambda: gone(child), 5, message="the job's child to be killed with it")


def test_without_a_cgroup_a_process_that_left_the_group_holding_the_output_holds_no_slot(
    claim,
):
    marker = f"escaped-{uuid.uuid4().hex[:8]}"
    escape = f"setsid sh -c 'ps -o sid= $$ > sid; sleep 300; echo {marker}'"
    execution = claim(["sh", "-c", f"{escape} & until [ -s sid ]; do sleep 0.01; done; echo left"])
    started = time.monotonic()
    try:
        outcome = run(execution)
    finally:  # the shell that left leads a session and a process group of its own
        for line in processes_matching(marker):
            os.killpg(int(line.split()[0]), signal.SIGKILL)
    assert time.monotonic() - started < 5
    assert (outcome.exit_code, outcome.error) == (0, "")
    assert outcome.log_tail == (
        "left\n[output not followed further: a process outside the job's group holds it]\n"
    )


def test_a_job_that_closes_its_output_runs_on_to_its_own_end(claim):
    execution = claim(["sh", "-c", "echo early; exec >&- 2>&-; sleep 1; exit 4"])
    started = time.monotonic()
    outcome = run(execution)
    assert time.monotonic() - started >= 1
    assert (outcome.exit_code, outcome.error, outcome.log_tail) == (4, "exit code 4", "early\n")


def test_a_program_that_does_not_exist_is_reported_not_started(claim):
    execution = claim(["no-such-program-anywhere", "--flag"])
    outcome = run(execution)
    error = "could not start 'no-such-program-anywhere': no such executable on PATH"
    assert (outcome.exit_code, outcome.error) == (None, error)
    assert Path(outcome.log_path).read_text() == outcome.log_tail == f"{error}\n"


def test_a_job_sees_its_environment_on_a_minimal_base_and_none_of_the_agents(
    claim, monkeypatch, tmp_path
):
    monkeypatch.setenv("DATABASE_URL", "postgres://agent:s3cret@db/scheduler")
    monkeypatch.setenv("AGENT_ONLY", "leaked")
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("TZ", raising=False)
    execution = claim(
        ["env", "-0"],
        env={"MODE": "fast", "LANG": "de_DE.UTF-8"},
        parameters={"n": 1},
        cpu_millis=1500,
        memory_mb=200,
    )
    outcome = run(execution)
    assert outcome.exit_code == 0, outcome.log_tail

    text = Path(outcome.log_path).read_text()
    seen = dict(entry.split("=", 1) for entry in text.split("\0") if entry)
    assert seen == {
        "PATH": os.environ["PATH"],
        "LANG": "de_DE.UTF-8",  # the job's own value wins over the base
        "HOME": str(tmp_path / "work" / "node-a" / execution.token),
        "MODE": "fast",
        "JOB_ID": str(execution.job.id),
        "JOB_ATTEMPT": "1",
        "JOB_TOKEN": execution.token,
        "JOB_PARAMETERS": '{"n": 1}',
        "NODE_NAME": "node-a",
        "SCHEDULER_AGENT": agent_identity("node-a"),
        "JOB_CPU_MILLIS": "1500",
        "JOB_MEMORY_MB": "200",
        "JOB_GPU": "0",
        "JOB_GPU_IDS": "",
        "CUDA_VISIBLE_DEVICES": "",  # no GPU: CUDA shows it none of the node's
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "JOB_TASK_INDEX": "0",
        "JOB_TASK_COUNT": "1",
        "JOB_TASK_NODES": "node-a",  # its address, or its name when it has none
    }
    assert "s3cret" not in text


def test_a_timeout_kills_the_whole_process_group(claim):
    # The shell ignores SIGTERM (and so does the sleep it starts): only the SIGKILL after
    # the grace period ends them.
    execution = claim(["sh", "-c", "trap '' TERM; sleep 60 & echo $!; wait"], timeout_seconds=1)
    started = time.monotonic()
    outcome = run(execution)
    elapsed = time.monotonic() - started

    assert (outcome.exit_code, outcome.error) == (-signal.SIGKILL, "timed out after 1 s")
    assert 1.5 <= elapsed < 10
    child = int(Path(outcome.log_path).read_text().split()[0])
    wait_until(lambda: gone(child), 5, message="the job's child to be killed with it")


BUSY = ["python3", "-c", "while True: pass"]


def test_a_job_past_its_cpu_time_limit_ends_with_sigxcpu_and_says_so(claim):
    execution = claim(BUSY, cpu_time_limit_seconds=1, timeout_seconds=20)  # not to hang
    started = time.monotonic()
    outcome = run(execution)

    assert (outcome.exit_code, outcome.error) == (
        -signal.SIGXCPU,
        "exceeded its CPU time limit of 1 s",
    )
    assert 0.9 <= time.monotonic() - started < 10


def test_the_cpu_time_limit_counts_cpu_not_wall_time_and_holds_in_each_process(claim):
    # Two seconds asleep under a one-second limit; the shell and its child each see it.
    execution = claim(
        ["sh", "-c", "ulimit -t; ulimit -Ht; sh -c 'ulimit -t'; sleep 2"],
        cpu_time_limit_seconds=1,
    )
    outcome = run(execution)

    assert (outcome.exit_code, outcome.error) == (0, "")
    assert Path(outcome.log_path).read_text().split() == ["1", "2", "1"]


def test_a_job_that_handles_sigxcpu_is_killed_a_cpu_second_later(claim):
    execution = claim(
        [
            "python3",
            "-c",
            "import signal\n"
            "signal.signal(signal.SIGXCPU, lambda *_: print('xcpu', flush=True))\n"
            "while True: pass",
        ],
        cpu_time_limit_seconds=1,
        timeout_seconds=20,
    )
    outcome = run(execution)

    assert (outcome.exit_code, outcome.error) == (-signal.SIGKILL, "killed by signal SIGKILL")
    assert "xcpu" in Path(outcome.log_path).read_text()


def test_a_missing_program_under_a_cpu_time_limit_is_refused_as_without_one(claim):
    outcome = run(claim(["no-such-program-here"], cpu_time_limit_seconds=5))

    assert outcome.exit_code is None
    assert outcome.error == "could not start 'no-such-program-here': no such executable on PATH"


def test_a_job_that_floods_its_output_past_its_timeout_is_killed_and_its_log_capped(
    claim, settings
):
    settings.JOB_LOG_MAX_BYTES = 10_000
    execution = claim(["sh", "-c", "trap '' TERM; while :; do echo flood; done"], timeout_seconds=1)
    started = time.monotonic()
    outcome = run(execution)
    assert 1.5 <= time.monotonic() - started < 10
    assert (outcome.exit_code, outcome.error) == (-signal.SIGKILL, "timed out after 1 s")
    log = Path(outcome.log_path).read_text()
    assert log.startswith("flood\nflood\n")
    assert "more bytes not kept]" in log.splitlines()[-1]
    assert outcome.log_tail.endswith("flood\n")


def test_a_cancel_stops_a_running_job(claim):
    execution = claim(["sleep", "60"])
    tracked = running.track(execution.token)
    outcomes = []
    runner = threading.Thread(target=lambda: outcomes.append(run(execution, tracked)))
    try:
        runner.start()
        wait_until(lambda: tracked.pgid is not None, 10, message="the job to start")
        started = time.monotonic()
        running.cancel(execution.token)
        runner.join(timeout=10)
        assert not runner.is_alive()
        assert time.monotonic() - started < 5
    finally:
        running.untrack(tracked)
    (outcome,) = outcomes
    assert (outcome.exit_code, outcome.error, outcome.cancelled) == (
        -signal.SIGTERM,
        "cancelled",
        True,
    )
    assert gone(tracked.pgid)


def test_a_cancel_asked_before_the_start_stops_the_job_as_it_starts(claim):
    execution = claim(["sleep", "60"])
    tracked = TrackedExecution(execution.token)
    tracked.kill("cancelled", cancelled=True)
    started = time.monotonic()
    outcome = run(execution, tracked)
    assert time.monotonic() - started < 5
    assert (outcome.exit_code, outcome.error, outcome.cancelled) == (
        -signal.SIGTERM,
        "cancelled",
        True,
    )


def test_the_log_is_capped_and_the_tail_kept(claim, settings):
    settings.JOB_LOG_MAX_BYTES = 1000
    settings.JOB_LOG_TAIL_BYTES = 100
    execution = claim(["seq", "1", "3000"])
    output = "".join(f"{i}\n" for i in range(1, 3001))

    outcome = run(execution)

    assert (outcome.exit_code, outcome.error) == (0, "")
    dropped = len(output) - 1000
    assert Path(outcome.log_path).read_text() == (
        f"{output[:1000]}\n[log truncated: {dropped} more bytes not kept]\n"
    )
    assert outcome.log_tail == output[-100:]
