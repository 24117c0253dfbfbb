"""Each job in a control group of its own, on the real kernel: its memory limit is the
kernel's, its CPU is held to its allocation, and nothing it starts outlives it, not even
a process that left its process group. Also the sampled memory watch that hosts without
cgroups get instead. The executions are placed and claimed as a node agent's are."""

import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from jobs.agent.cgroups import CgroupsUnavailable, JobGroups, cgroups, prepare
from jobs.agent.runner import running
from tests.jobs.agent.conftest import run
from tests.processes import processes_matching, wait_until

# The agent's log shipping stores the output from a thread of its own, through the API.
pytestmark = pytest.mark.django_db(transaction=True)

HOG = "import time; x = bytearray(300 * 2**20); time.sleep(30)"
# Two processes busy for 2 s; prints the CPU seconds they used.
BUSY = """import os, time
until = time.time() + 2
for _ in range(2):
    if os.fork() == 0:
        while time.time() < until:
            pass
        os._exit(0)
os.wait(); os.wait()
t = os.times()
print(round(t.children_user + t.children_system, 2))
"""


def agent_job_groups(pids_max: int):
    """node-a's agent with its jobs' cgroups, as `run_node` sets them up, under a name of
    this test's own; removed at the end."""
    try:
        groups = prepare("node-a", f"test:{uuid.uuid4().hex}", pids_max=pids_max)
    except CgroupsUnavailable as exc:
        pytest.skip(f"this host gives no job cgroups: {exc}")
    cgroups.groups = groups
    yield groups
    cgroups.stop()
    assert not any(directory.exists() for directory in groups.dirs)


@pytest.fixture
def job_groups(settings):
    yield from agent_job_groups(settings.NODE_JOB_PIDS_MAX)


@pytest.fixture
def job_groups_of_20_processes():
    yield from agent_job_groups(20)


@pytest.fixture
def job_groups_without_a_process_limit():
    yield from agent_job_groups(0)


def job_group_names(groups: JobGroups) -> set[str]:
    return {p.name for d in groups.dirs for p in d.iterdir() if p.is_dir()}


def processes_in_job_groups(groups: JobGroups) -> set[int]:
    return {
        int(pid)
        for d in groups.dirs
        for group in d.iterdir()
        if group.is_dir()
        for pid in (group / "cgroup.procs").read_text().split()
    }


def test_a_job_past_its_memory_is_killed_by_the_kernel_at_once(claim, job_groups):
    # No sampling runs here (no agent loop): only the kernel can stop the job before its
    # timeout.
    execution = claim(["python3", "-c", HOG], memory_mb=100, timeout_seconds=20)
    started = time.monotonic()
    outcome = run(execution)
    assert time.monotonic() - started < 10
    assert (outcome.exit_code, outcome.error) == (-9, "exceeded memory limit of 100 MB")
    assert processes_in_job_groups(job_groups) == set()


def test_without_cgroups_the_sampled_watch_kills_a_job_past_its_memory(claim):
    assert cgroups.groups is None
    execution = claim(["python3", "-c", HOG], memory_mb=100, timeout_seconds=20)
    tracked = running.track(execution.token)
    stop = threading.Event()

    def watch():
        while not stop.wait(0.1):
            running.enforce_memory_limits()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        outcome = run(execution, tracked)
    finally:
        stop.set()
        watcher.join()
        running.untrack(tracked)
    assert (outcome.exit_code, outcome.error) == (-15, "exceeded memory limit of 100 MB")


def test_a_group_is_used_again_with_the_next_jobs_limits(claim, job_groups):
    first = run(claim(["python3", "-c", HOG], memory_mb=100, timeout_seconds=20))
    assert first.error == "exceeded memory limit of 100 MB"
    # The same group, now 400 MB: the 300 MB fit, and the first job's OOM kill is not
    # counted against the second.
    second = run(claim(["python3", "-c", "x = bytearray(300 * 2**20)"], memory_mb=400))
    assert (second.exit_code, second.error, second.log_tail) == (0, "", "")
    assert job_group_names(job_groups) == {"slot-1"}
    assert processes_in_job_groups(job_groups) == set()


def test_a_job_that_survives_an_oom_kill_of_its_child_succeeds_and_its_log_says_so(
    claim, job_groups
):
    execution = claim(["sh", "-c", f"python3 -c '{HOG}'; echo carried on"], memory_mb=100)
    outcome = run(execution)
    assert (outcome.exit_code, outcome.error) == (0, "")
    assert outcome.log_tail.splitlines()[-2:] == [
        "carried on",
        "[the kernel killed 1 process(es) of this job for going past its memory limit of 100 MB]",
    ]


def test_a_job_gets_the_cpu_of_its_allocation_however_many_processes_it_runs(claim, job_groups):
    execution = claim(["python3", "-c", BUSY], cpu_millis=250)
    outcome = run(execution)
    assert outcome.exit_code == 0
    used = float(outcome.log_tail)
    # 0.25 of a core for 2 s is 0.5 s; unheld, two busy processes take 2 s or more of two
    # cores.
    assert used < 1.0


def test_a_process_that_leaves_the_jobs_process_group_is_killed_when_the_job_ends(
    claim, job_groups
):
    marker = f"escaped-{uuid.uuid4().hex[:8]}"
    # setsid puts the shell in a session of its own, out of reach of the job's process
    # group, where it holds the job's output open; the job ends once it is there.
    escape = f"setsid sh -c 'ps -o sid= $$ > sid; sleep 300; echo {marker}'"
    execution = claim(["sh", "-c", f"{escape} & until [ -s sid ]; do sleep 0.01; done; echo left"])
    started = time.monotonic()
    outcome = run(execution)
    assert time.monotonic() - started < 10
    assert (outcome.exit_code, outcome.log_tail) == (0, "left\n")
    wait_until(lambda: not processes_matching(marker), 5, message="the escaped sleep killed")
    assert processes_in_job_groups(job_groups) == set()


def test_an_agent_removes_the_job_groups_a_dead_agent_left_and_kills_what_ran_in_them(
    job_groups,
):
    marker = f"orphan-{uuid.uuid4().hex[:8]}"
    group = job_groups.take(memory_mb=64, cpu_millis=500)
    job = subprocess.Popen(
        group.command(["sh", "-c", f"setsid sh -c 'sleep 300; echo {marker}'"]),
        start_new_session=True,
    )

    def escaped_in_its_group():
        # pgrep's pattern: the escaped shell's command line, not the commands that start it.
        found = processes_matching(f"^sh -c sleep 300; echo {marker}$")
        return found and {int(line.split()[0]) for line in found} <= group.pids()

    wait_until(escaped_in_its_group, 5, message="the orphan in its job's group")
    assert job_groups.sweep() == 1
    job.wait(timeout=5)
    wait_until(lambda: not processes_matching(marker), 5, message="the orphan killed")
    assert job_group_names(job_groups) == set()
    assert all(Path(d).is_dir() for d in job_groups.dirs)


@pytest.mark.parametrize(
    ("program", "reason"),
    [
        ("no-such-program-anywhere", "no such executable on PATH"),
        ("{tmp}/x", "Permission denied"),
    ],
)
def test_a_program_that_cannot_run_is_reported_not_started_as_without_a_cgroup(
    claim, job_groups, tmp_path, program, reason
):
    (tmp_path / "x").write_text("echo it ran\n")  # not executable
    program = program.format(tmp=tmp_path)
    outcome = run(claim([program, "--flag"]))
    assert (outcome.exit_code, outcome.error) == (None, f"could not start {program!r}: {reason}")
    assert processes_in_job_groups(job_groups) == set()


FORKS = """import os, sys, time
started = 0
for _ in range(30):
    try:
        if os.fork() == 0:
            time.sleep(10)
            os._exit(0)
    except BlockingIOError:  # EAGAIN: refused at the cgroup's limit
        break
    started += 1
print(started)
sys.exit(3 if started < 30 else 0)
"""


def test_a_job_gets_no_more_processes_than_its_limit_and_its_log_says_it_reached_it(
    claim, job_groups_of_20_processes
):
    if not job_groups_of_20_processes.pids_max:
        pytest.skip("this host gives the agent no pids controller")
    started = time.monotonic()
    outcome = run(claim(["python3", "-c", FORKS]))
    # The job itself and 19 children are 20; its children, killed when it ends, do not
    # hold it for their 10 s.
    assert time.monotonic() - started < 8
    assert (outcome.exit_code, outcome.error) == (
        3,
        "exit code 3 after reaching its limit of 20 processes",
    )
    assert outcome.log_tail.splitlines() == [
        "19",
        "[the kernel refused this job 1 new process(es) or thread(s) at its limit of 20 "
        "(NODE_JOB_PIDS_MAX)]",
    ]
    assert processes_in_job_groups(job_groups_of_20_processes) == set()


def test_without_a_limit_of_processes_jobs_stay_out_of_the_pids_hierarchy(
    claim, job_groups_without_a_process_limit
):
    groups = job_groups_without_a_process_limit
    assert (groups.pids_max, groups.pids_dir) == (0, None)
    assert not any("pids" in str(d) for d in groups.dirs)
    outcome = run(claim(["python3", "-c", FORKS]))
    assert (outcome.exit_code, outcome.log_tail) == (0, "30\n")
