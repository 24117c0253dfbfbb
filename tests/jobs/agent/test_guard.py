"""The guard kills an agent's jobs when the agent dies, however it dies. The agent here
is a real process started the way `run_node` starts its guard; it is SIGKILLed."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.processes import gone, wait_until

# An agent as far as the guard can tell: it starts its guard, then a job marked as its
# own (a shell and a sleep the shell started), prints the pids, and waits to be killed.
AGENT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from jobs.agent.guard import start_guard
    identity = sys.argv[1]
    guard = start_guard(identity)
    job = subprocess.Popen(
        ["sh", "-c", "sleep 60 & echo $!; wait"],
        env={"PATH": os.environ["PATH"], "SCHEDULER_AGENT": identity},
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    print(guard.pid, job.pid, job.stdout.readline().strip(), flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def start_agent(tmp_path):
    agents = []

    def start(identity: str) -> tuple[subprocess.Popen, int, int, int]:
        agent = subprocess.Popen(
            [sys.executable, "-c", AGENT, identity],
            cwd=os.getcwd(),
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        agents.append(agent)
        guard, job, job_child = (int(pid) for pid in agent.stdout.readline().split())
        return agent, guard, job, job_child

    yield start
    for agent in agents:
        agent.kill()
        agent.wait(timeout=10)
        agent.stdout.close()


def test_a_sigkilled_agents_jobs_die_with_it_and_no_one_elses(start_agent, groups):
    agent, guard, job, job_child = start_agent("node-a:/work/one")
    other_agent, other_guard, other_job, _ = start_agent("node-a:/work/two")
    unmarked = groups.start(["sleep", "60"])

    # The agent's whole group goes, its guard and its jobs stay: only the guard acts.
    os.killpg(agent.pid, signal.SIGKILL)
    agent.wait(timeout=10)

    for pid, what in ((job, "the job"), (job_child, "the job's child"), (guard, "the guard")):
        wait_until(lambda pid=pid: gone(pid), 5, message=f"{what} to be gone")
    for pid in (other_agent.pid, other_guard, other_job):
        assert not gone(pid)
    assert unmarked.poll() is None


def test_the_guard_of_a_living_agent_leaves_its_jobs_alone(start_agent):
    agent, guard, job, job_child = start_agent("node-b:/work/one")
    # Nothing for the guard to read keeps it waiting; a second's wait shows it does.
    with pytest.raises(subprocess.TimeoutExpired):
        agent.wait(timeout=1)
    assert not gone(guard)
    assert not gone(job) and not gone(job_child)
