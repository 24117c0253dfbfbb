"""What /proc says about processes: CPU time and resident memory per process group, what
a set of groups used between two looks, and which processes carry a given environment
variable."""

import os
import time
from collections import defaultdict
from typing import NamedTuple

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _pids():
    return (int(name) for name in os.listdir("/proc") if name.isdigit())


class GroupUsage(NamedTuple):
    # User and system time of the group's processes and of the children they have
    # waited for, so a short-lived child's CPU is not lost when it exits.
    cpu_seconds: float
    resident_bytes: int  # shared pages count once per process


def usage_by_group() -> dict[int, GroupUsage]:
    """CPU time so far and resident memory now of every process group, in one pass."""
    ticks: dict[int, int] = defaultdict(int)
    pages: dict[int, int] = defaultdict(int)
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone since listdir
        # Fields after the command name, which may itself hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        pgrp = int(fields[2])
        utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
        ticks[pgrp] += utime + stime + cutime + cstime
        pages[pgrp] += int(fields[21])
    return {pgrp: GroupUsage(ticks[pgrp] / CLOCK_TICKS, pages[pgrp] * PAGE_BYTES) for pgrp in ticks}


def resident_mb_by_group() -> dict[int, float]:
    """Resident memory of every process group, in MB."""
    return {pgrp: usage.resident_bytes / (1024 * 1024) for pgrp, usage in usage_by_group().items()}


class UsageMeter:
    """What a set of process groups used: CPU time per second since the previous look
    (in cores), and resident memory now (in bytes).

    A group seen for the first time counts all its CPU time, as it started since the
    previous look (the agent's job groups are looked at every heartbeat); a group that
    ended in between loses its last stretch, which /proc no longer shows.
    """

    def __init__(self):
        self._cpu_seconds: dict[int, float] = {}
        self._at: float | None = None

    def measure(self, groups: set[int]) -> tuple[float, int]:
        now = time.monotonic()
        usage = usage_by_group() if groups else {}  # nothing to read while idle
        seen = {pgrp: usage[pgrp] for pgrp in groups if pgrp in usage}
        spent = sum(
            max(0.0, u.cpu_seconds - self._cpu_seconds.get(pgrp, 0.0)) for pgrp, u in seen.items()
        )
        elapsed = now - self._at if self._at is not None else 0.0
        self._cpu_seconds = {pgrp: u.cpu_seconds for pgrp, u in seen.items()}
        self._at = now
        cores = spent / elapsed if elapsed > 0 else 0.0
        return cores, sum(u.resident_bytes for u in seen.values())


def groups_with_env(name: str, value: str) -> set[int]:
    """Process groups of the processes whose environment has `name=value`."""
    needle = f"{name}={value}".encode()
    groups = set()
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            groups.add(os.getpgid(pid))
        except (OSError, ProcessLookupError):
            continue
    return groups
