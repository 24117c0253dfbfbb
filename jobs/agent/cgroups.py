"""Each job in a control group of its own, where the host lets the agent make them
(`NODE_CGROUPS`): the kernel holds the job to its allocation, and the agent finds every
process the job started.

- Memory: the group's limit is the job's `memory_mb`, swap included where the kernel
  counts it. Past it the kernel's OOM killer kills a process of the job at once, and the
  execution fails with "exceeded memory limit of N MB", the reason the sampled watch
  gives where there are no groups.
- CPU: a CFS quota of `cpu_millis` per period, so a job of 1.5 CPU gets 1.5 cores' time
  however many threads it runs.
- Processes: one that leaves the job's process group (setsid, a daemon's double fork)
  stays in the job's control group, and is killed with the rest when the job ends. Where
  the pids controller is there too, a job may have at most NODE_JOB_PIDS_MAX processes
  and threads at once, so a fork bomb fails its own forks, not the host's.

Both cgroup versions are used. With v2 (one hierarchy) the agent must have a cgroup of its
own with the memory and cpu controllers (and pids) delegated to it (systemd's `Delegate=`, which
deploy/systemd/scheduler-node@.service sets): a v2 group with children holds no processes,
so the agent moves itself into a leaf, `agent`, and makes its jobs' groups beside it. With
v1 (a hierarchy per controller) it makes them below its own groups in the memory and cpu
hierarchies (and pids).

A job enters its group before it runs: a shell writes "0" (itself) to the group's
`cgroup.procs`, then execs the job's command in its place, so nothing the job runs starts
outside.
"""

import contextlib
import errno
import hashlib
import logging
import os
import signal
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

MODES = ("auto", "off", "required")
CONTROLLERS = ("memory", "cpu")  # needed
PIDS = "pids"  # used where there, for NODE_JOB_PIDS_MAX
PERIOD_US = 100_000
MIN_QUOTA_US = 1_000  # the kernel's floor
# How long the end of a job waits for its group to empty after SIGKILL before it leaves
# the group to the next agent's sweep.
EMPTY_WAIT_SECONDS = 2.0


class CgroupsUnavailable(Exception):
    """Why this agent cannot make its jobs' control groups."""


def _read(path: Path) -> str:
    return path.read_text().strip()


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _mounts() -> list[tuple[str, Path, set[str]]]:
    """(filesystem type, mount point, super options) of the cgroup mounts this process sees."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fstype, _source, options = after.split()[:3]
        if fstype in ("cgroup", "cgroup2"):
            found.append((fstype, Path(before.split()[4]), set(options.split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """This process's cgroup per hierarchy: "" for v2's, each controller's name for v1."""
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _id, names, path = line.split(":", 2)
        for name in names.split(",") if names else [""]:
            own[name] = path
    return own


def own_groups() -> dict[str, Path]:
    """The directories of this process's own groups that hold what an agent uses: v2's
    (key "") and v1's memory, cpu and pids ones (keyed by controller), where mounted."""
    own = _own_paths()
    found = {}
    for fstype, mount, options in _mounts():
        names = [""] if fstype == "cgroup2" else [c for c in (*CONTROLLERS, PIDS) if c in options]
        for name in names:
            if name in own:
                found[name] = mount / own[name].lstrip("/")
    return found


class JobGroups:
    """Where this agent makes its jobs' groups (v2's one directory, or v1's memory, cpu and
    pids directories), and the groups it has made. A group is reused: the one a job ended in
    is emptied and waits for the next job, so an agent has about as many as it runs jobs
    at once, and each job does a few writes rather than a mkdir and an rmdir under the
    kernel's one cgroup lock (on bench/throughput.py the two cost the same)."""

    def __init__(
        self,
        version: int,
        memory_dir: Path,
        cpu_dir: Path,
        pids_dir: Path | None = None,
        *,
        pids_max: int = 0,
    ):
        """`pids_dir`: the agent's directory in the pids hierarchy, where there is one (v1);
        `pids_max`: the most processes and threads a job may have at once (0: no limit,
        and its jobs do not enter the pids hierarchy, which would cost a move a job)."""
        self.version, self.memory_dir, self.cpu_dir = version, memory_dir, cpu_dir
        self.pids_dir = pids_dir if pids_max else None
        self.pids_max = pids_max if pids_dir else 0
        self._wanted_pids_max = pids_max
        self.dirs = tuple(dict.fromkeys(d for d in (memory_dir, cpu_dir, self.pids_dir) if d))
        # A previous agent of the node may have used the pids hierarchy where this one
        # does not: its leftovers are swept there too.
        self._pids_base = pids_dir
        self._swept = tuple(dict.fromkeys(d for d in (memory_dir, cpu_dir, pids_dir) if d))
        self._lock = threading.Lock()
        self._idle: list[JobCgroup] = []
        self._made = 0

    def describe(self) -> str:
        where = ", ".join(str(d) for d in self.dirs)
        if self.pids_max:
            pids = f", at most {self.pids_max} processes a job"
        elif self._wanted_pids_max:
            pids = ", no pids controller: the number of a job's processes is not limited"
        else:
            pids = ""
        return f"cgroup v{self.version} ({where}){pids}"

    def take(self, *, memory_mb: int, cpu_millis: int) -> "JobCgroup":
        """An empty group with one job's limits (0: none), before the job starts."""
        with self._lock:
            group = self._idle.pop() if self._idle else None
        if group is not None:
            try:
                group.limit(memory_mb=memory_mb, cpu_millis=cpu_millis, pids_max=self.pids_max)
                return group
            except OSError:  # its last job left memory charged past this limit (shm)
                group.remove()
        with self._lock:
            self._made += 1
            group = self._group(f"slot-{self._made}", self.pids_dir)
        try:
            for directory in group.dirs:
                directory.mkdir(exist_ok=True)
            group.limit(memory_mb=memory_mb, cpu_millis=cpu_millis, pids_max=self.pids_max)
        except BaseException:
            group.remove()
            raise
        return group

    def give_back(self, group: "JobCgroup") -> None:
        """Its job has ended: kill what it left, and keep the group for the next job (one
        that does not empty is left to the next agent's sweep)."""
        if group.kill():
            with self._lock:
                self._idle.append(group)

    def sweep(self) -> int:
        """Kill and remove the groups a previous agent of this node left (it died while
        their jobs ran, or it stopped); how many there were."""
        names = {p.name for d in self._swept if d.is_dir() for p in d.iterdir() if p.is_dir()}
        for name in names:
            self._group(name, self._pids_base).remove()
        return len(names)

    def remove_all(self) -> None:
        """Sweep the groups, then remove the agent's directories of them."""
        self.sweep()
        for directory in self._swept:
            with contextlib.suppress(OSError):
                directory.rmdir()

    def _group(self, name: str, pids_base: Path | None) -> "JobCgroup":
        pids_dir = pids_base / name if pids_base else None
        return JobCgroup(self.version, self.memory_dir / name, self.cpu_dir / name, pids_dir)


class JobCgroup:
    """One job's control group (v1: its directory in each hierarchy)."""

    def __init__(self, version: int, memory_dir: Path, cpu_dir: Path, pids_dir: Path | None = None):
        self.version, self.memory_dir, self.cpu_dir = version, memory_dir, cpu_dir
        self.pids_dir = pids_dir
        self.dirs = tuple(dict.fromkeys(d for d in (memory_dir, cpu_dir, pids_dir) if d))
        self.pids_max = 0
        self._oom_kills_before = self._pids_refused_before = 0

    def limit(self, *, memory_mb: int, cpu_millis: int, pids_max: int = 0) -> None:
        """Set a job's limits (0: none) on the group, which may have held another job."""
        memory = str(memory_mb * 1024 * 1024) if memory_mb else None
        quota = max(MIN_QUOTA_US, cpu_millis * PERIOD_US // 1000) if cpu_millis else None
        if self.version == 2:
            _write(self.memory_dir / "memory.max", memory or "max")
            with contextlib.suppress(FileNotFoundError):  # no swap accounting
                _write(self.memory_dir / "memory.swap.max", "0")
            _write(self.cpu_dir / "cpu.max", f"{quota or 'max'} {PERIOD_US}")
        else:
            # Memory and swap together may never be under memory alone: lifted first.
            memsw = self.memory_dir / "memory.memsw.limit_in_bytes"
            swap_accounted = memsw.exists()
            if swap_accounted:
                _write(memsw, "-1")
            _write(self.memory_dir / "memory.limit_in_bytes", memory or "-1")
            if swap_accounted:
                _write(memsw, memory or "-1")
            _write(self.cpu_dir / "cpu.cfs_period_us", str(PERIOD_US))
            _write(self.cpu_dir / "cpu.cfs_quota_us", str(quota or -1))
        if self.pids_dir is not None:
            _write(self.pids_dir / "pids.max", str(pids_max or "max"))
            self.pids_max = pids_max
        self._oom_kills_before = self._oom_kills_total()
        self._pids_refused_before = self._pids_refused_total()

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run by a shell that first moves itself into this group, then execs it in
        its place: everything the job runs starts inside. (A `preexec_fn` would do it in
        Python between fork and exec, but it makes subprocess fork the whole agent rather
        than vfork it, which costs about 8 ms of CPU a job.)"""
        enter = " ".join(
            f'echo 0 > "${i}" || {{ echo "could not enter the cgroup ${i}" >&2; exit 126; }};'
            for i in range(1, len(self.dirs) + 1)
        )
        script = f'{enter} shift {len(self.dirs)}; exec "$@"'
        return ["/bin/sh", "-c", script, "sh", *(str(d / "cgroup.procs") for d in self.dirs), *argv]

    def oom_kills(self) -> int:
        """How many of its processes the kernel killed for going past the memory limit
        since its limits were set."""
        return self._oom_kills_total() - self._oom_kills_before

    def _oom_kills_total(self) -> int:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        return _count(self.memory_dir / name, "oom_kill")

    def pids_refused(self) -> int:
        """How many forks (or new threads) the kernel refused its processes at their limit
        of processes since its limits were set."""
        return self._pids_refused_total() - self._pids_refused_before

    def _pids_refused_total(self) -> int:
        return _count(self.pids_dir / "pids.events", "max") if self.pids_dir else 0

    def pids(self) -> set[int]:
        found = set()
        for directory in self.dirs:
            with contextlib.suppress(FileNotFoundError):
                found.update(int(pid) for pid in _read(directory / "cgroup.procs").split())
        return found

    def kill(self) -> bool:
        """SIGKILL whatever runs in it, until it is empty (a process may fork meanwhile);
        whether it emptied in EMPTY_WAIT_SECONDS."""
        deadline = time.monotonic() + EMPTY_WAIT_SECONDS
        while pids := self.pids():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                logger.warning("job cgroup did not empty path=%s pids=%s", self.dirs[0], pids)
                return False
            time.sleep(0.01)
        return True

    def remove(self) -> None:
        """Kill what runs in it, then remove it. A group that does not empty is left to the
        next agent's sweep."""
        if not self.kill():
            return
        deadline = time.monotonic() + EMPTY_WAIT_SECONDS
        for directory in self.dirs:
            self._rmdir(directory, deadline)

    @staticmethod
    def _rmdir(directory: Path, deadline: float) -> None:
        while True:
            try:
                directory.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as exc:  # EBUSY: a killed process not yet gone
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    logger.warning("job cgroup not removed path=%s: %s", directory, exc)
                    return
                time.sleep(0.01)


def _count(path: Path, key: str) -> int:
    """A counter of a flat keyed file ("key value" lines); 0 where there is no file."""
    try:
        lines = _read(path).splitlines()
    except FileNotFoundError:
        return 0
    counts = dict(line.split() for line in lines if line.count(" ") == 1)
    return int(counts.get(key, 0))


def node_tag(node_name: str, identity: str) -> str:
    """The name of this agent's directory of job groups: its node, and a hash of its
    identity (`runner.agent_identity`), so agents of other clusters on the same host with
    the same node name keep apart."""
    return f"scheduler-{node_name}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"


def prepare(node_name: str, identity: str, *, pids_max: int = 0) -> JobGroups:
    """Make this agent's directory of job groups, or say why it cannot. `pids_max`: the
    most processes a job may have at once (0: no limit), where the pids controller is."""
    own = own_groups()
    controllers = own[""] / "cgroup.controllers" if "" in own else None
    available = set(_read(controllers).split()) if controllers and controllers.exists() else set()
    if set(CONTROLLERS) <= available:
        return _prepare_v2(own[""], node_tag(node_name, identity), PIDS in available, pids_max)
    if not set(CONTROLLERS) <= own.keys():
        raise CgroupsUnavailable(
            "no cgroup hierarchy gives this agent the memory and cpu controllers "
            "(cgroup v2: delegate them to its cgroup, as systemd's Delegate= does)"
        )
    tag = node_tag(node_name, identity)
    pids_dir = own[PIDS] / tag if PIDS in own else None
    groups = JobGroups(1, own["memory"] / tag, own["cpu"] / tag, pids_dir, pids_max=pids_max)
    for directory in groups.dirs:
        try:
            directory.mkdir(exist_ok=True)
        except OSError as exc:
            raise CgroupsUnavailable(f"cannot make {directory}: {exc.strerror}") from exc
    return groups


def _prepare_v2(here: Path, tag: str, pids: bool, pids_max: int) -> JobGroups:
    enable = " ".join(f"+{c}" for c in (*CONTROLLERS, *([PIDS] if pids else [])))
    try:
        # Only the real root group, the one without a cgroup.type, may hold processes and
        # children with controllers alike; a namespace's root may not.
        if (here / "cgroup.type").exists():
            leaf = here / "agent"
            leaf.mkdir(exist_ok=True)
            _write(leaf / "cgroup.procs", "0")
            try:
                _write(here / "cgroup.subtree_control", enable)
            except OSError as exc:
                _write(here / "cgroup.procs", "0")  # back where it was
                if exc.errno == errno.EBUSY:
                    raise CgroupsUnavailable(
                        f"other processes share this agent's cgroup {here}: run it in one of "
                        "its own (systemd: Delegate=)"
                    ) from exc
                raise
        else:
            _write(here / "cgroup.subtree_control", enable)
        base = here / tag
        base.mkdir(exist_ok=True)
        _write(base / "cgroup.subtree_control", enable)
    except OSError as exc:
        raise CgroupsUnavailable(f"cannot set up job cgroups in {here}: {exc}") from exc
    return JobGroups(2, base, base, base if pids else None, pids_max=pids_max)


class NodeCgroups:
    """This agent's choice, made once at its start: its jobs' groups, or None."""

    def __init__(self):
        self.groups: JobGroups | None = None

    def start(self, mode: str, node_name: str, identity: str, *, pids_max: int = 0) -> str:
        """Set up by NODE_CGROUPS (and NODE_JOB_PIDS_MAX); what the agent says about it at
        its start. `required` raises CgroupsUnavailable where the host does not allow them."""
        if mode == "off":
            return "job cgroups off (NODE_CGROUPS=off): memory limits are sampled"
        try:
            groups = prepare(node_name, identity, pids_max=pids_max)
        except CgroupsUnavailable as exc:
            if mode == "required":
                raise
            return f"no job cgroups ({exc}): memory limits are sampled, CPU is not limited"
        swept = groups.sweep()
        self.groups = groups
        left = f"; removed {swept} left by a previous agent" if swept else ""
        return f"each job in a cgroup of its own under {groups.describe()}{left}"

    def stop(self) -> None:
        """The agent stops: remove its jobs' groups, killing what still runs in them, and
        its directory of them."""
        groups, self.groups = self.groups, None
        if groups is not None:
            groups.remove_all()


cgroups = NodeCgroups()
