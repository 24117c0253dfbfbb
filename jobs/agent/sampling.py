"""What /proc says about processes: resident memory per process group, and which
processes carry a given environment variable."""

import os
from collections import defaultdict

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _pids():
    return (int(name) for name in os.listdir("/proc") if name.isdigit())


def resident_mb_by_group() -> dict[int, float]:
    """Resident memory of every process group, in MB (shared pages count once per process)."""
    totals: dict[int, float] = defaultdict(float)
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone since listdir
        # Fields after the command name, which may itself hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        pgrp, rss_pages = int(fields[2]), int(fields[21])
        totals[pgrp] += rss_pages * PAGE_BYTES / (1024 * 1024)
    return totals


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
