"""The guard of an agent's jobs: a small process of its own that kills the agent's job
process groups as soon as the agent is gone, however it went (SIGKILL and OOM kills too),
so a job never runs on unwatched while its execution is failed over and run elsewhere.

The agent keeps the write end of a pipe open and never writes to it; the guard reads the
other end. When the agent's process ends, the kernel closes the write end, the guard
reads end-of-file, kills every process group whose processes carry the agent's identity
in `SCHEDULER_AGENT` (set in each job's environment), and exits. One process per agent
does what `setpriv --pdeathsig KILL` did with an extra exec for each job (about a
millisecond of CPU each), and it reaches a job's whole group, not only its first process.
A guard that is itself killed leaves the orphans to the next agent's start
(`supervision.reap_orphans`).

    python -m jobs.agent.guard IDENTITY    (its stdin is the pipe)
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .sampling import groups_with_env

AGENT_ENV = "SCHEDULER_AGENT"
# A job that forked while the first sweep killed its group can leave a process in a new
# group; the second sweep, this long after, takes it.
SECOND_SWEEP_SECONDS = 0.2

_pipe_write_ends: list[int] = []


def kill_agent_groups(identity: str) -> int:
    """SIGKILL the process groups of the jobs of the agent `identity`; how many there were."""
    groups = groups_with_env(AGENT_ENV, identity) - {os.getpgid(0)}
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    return len(groups)


def start_guard(identity: str) -> subprocess.Popen:
    """Start the guard of this process's jobs. It outlives this process only long enough
    to kill them; its session is its own, so a signal to the agent's group spares it."""
    read_end, write_end = os.pipe()  # neither is inherited by the jobs (PEP 446)
    try:
        guard = subprocess.Popen(
            [sys.executable, "-m", __name__, identity],
            stdin=read_end,
            cwd=Path(__file__).resolve().parents[2],
            start_new_session=True,
        )
    finally:
        os.close(read_end)
    _pipe_write_ends.append(write_end)  # closed by the kernel when this process ends
    return guard


def main(identity: str) -> None:
    while os.read(sys.stdin.fileno(), 4096):
        pass
    kill_agent_groups(identity)
    time.sleep(SECOND_SWEEP_SECONDS)
    kill_agent_groups(identity)


if __name__ == "__main__":
    main(sys.argv[1])
