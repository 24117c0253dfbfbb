"""Placement: pure functions over an in-memory snapshot of nodes and queues.

Predicates say whether a node may take a request; scorers rank the nodes that may; the
planner decides which queue is served next (weighted dominant-resource fair share),
which team's job within it (the same, between its teams) and which node each job gets.
Nothing here touches the database, so the scheduling cycle can place thousands of jobs
between one read and one write, and the rules can be property-tested on their own.

`choose_node` is the rule, written plainly. `NodeIndex` gives the same answers without
looking at every node for every job, which is what lets one cycle place ten thousand
jobs on a thousand nodes; a property test holds it to `choose_node`. Scores are exact
fractions, so ties are real ties and always go to the lower node name.
"""

import heapq
import math
from bisect import bisect_left, insort
from collections.abc import (
    Callable,
    Collection,
    Hashable,
    Iterable,
    Mapping,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass, field, replace
from enum import StrEnum
from fractions import Fraction


@dataclass(frozen=True)
class Request:
    cpu_millis: int
    memory_mb: int
    gpu: int = 0
    node_selector: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple:
        """Equal for requests that fit exactly the same nodes."""
        return (self.cpu_millis, self.memory_mb, self.gpu, selector_key(self.node_selector))


def selector_key(selector: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(selector.items()))


@dataclass
class NodeSlot:
    """A node as placement sees it: capacity, what is free now, and its labels."""

    id: int
    name: str
    cpu_millis: int
    memory_mb: int
    gpu: int
    free_cpu_millis: int
    free_memory_mb: int
    free_gpu: int
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, node) -> "NodeSlot":
        """The slot of a `nodes.Node` (anything with its capacity, free_* and labels)."""
        return cls(
            id=node.id,
            name=node.name,
            cpu_millis=node.cpu_millis,
            memory_mb=node.memory_mb,
            gpu=node.gpu,
            free_cpu_millis=node.free_cpu_millis,
            free_memory_mb=node.free_memory_mb,
            free_gpu=node.free_gpu,
            labels=node.labels or {},
        )

    def take(self, request: Request) -> None:
        self.free_cpu_millis -= request.cpu_millis
        self.free_memory_mb -= request.memory_mb
        self.free_gpu -= request.gpu


class Strategy(StrEnum):
    BINPACK = "binpack"  # the fullest node that fits: keeps large holes for large jobs
    SPREAD = "spread"  # the emptiest node that fits: spreads load and blast radius


class Unplaced(StrEnum):
    """Why a request was not placed; the values are job pending reasons."""

    NODE_SELECTOR = "node_selector"
    INSUFFICIENT_CAPACITY = "insufficient_capacity"
    QUEUE_QUOTA = "queue_quota"
    CONCURRENCY_LIMIT = "concurrency_limit"
    # The first job that found no room: room is reserved for it on one node (`Reservation`).
    RESERVATION = "reservation"
    # It would fit the reserved node now, but would still hold room there when the
    # reserved job is due to start, and fits nowhere else.
    WOULD_DELAY_RESERVATION = "would_delay_reservation"
    # A gang whose tasks do not all fit at once (see `NodeIndex.choose_gang`).
    GANG_DOES_NOT_FIT = "gang_does_not_fit"


# --- Predicates and scores -------------------------------------------------------------


def matches_selector(node: NodeSlot, selector: Mapping[str, str]) -> bool:
    return all(node.labels.get(key) == value for key, value in selector.items())


def fits_now(node: NodeSlot, request: Request) -> bool:
    return (
        request.cpu_millis <= node.free_cpu_millis
        and request.memory_mb <= node.free_memory_mb
        and request.gpu <= node.free_gpu
    )


def free_fraction_after(node: NodeSlot, request: Request) -> Fraction:
    """Mean share of the node's resources left free once the request is placed (0 = full).

    Only the resources the node has count, so a GPU node's idle GPU makes it look emptier
    to a CPU-only job: bin-packing keeps GPU nodes for GPU jobs.
    """
    shares = [
        Fraction(free - wanted, capacity)
        for free, wanted, capacity in (
            (node.free_cpu_millis, request.cpu_millis, node.cpu_millis),
            (node.free_memory_mb, request.memory_mb, node.memory_mb),
            (node.free_gpu, request.gpu, node.gpu),
        )
        if capacity
    ]
    return sum(shares, Fraction(0)) / len(shares) if shares else Fraction(0)


def choose_node(
    nodes: Iterable[NodeSlot], request: Request, strategy: Strategy = Strategy.BINPACK
) -> NodeSlot | Unplaced:
    """The best node for the request, or why there is none. Ties go to the lower name."""
    best: NodeSlot | None = None
    best_key: tuple[Fraction, str] | None = None
    selector_matched = False
    for node in nodes:
        if not matches_selector(node, request.node_selector):
            continue
        selector_matched = True
        if not fits_now(node, request):
            continue
        left = free_fraction_after(node, request)
        key = (left if strategy is Strategy.BINPACK else -left, node.name)
        if best_key is None or key < best_key:
            best, best_key = node, key
    if best is not None:
        return best
    if request.node_selector and not selector_matched:
        return Unplaced.NODE_SELECTOR
    return Unplaced.INSUFFICIENT_CAPACITY


# --- The same choice, fast -------------------------------------------------------------


class _Shape:
    """Nodes with the same capacity and labels.

    Among them, the score of a node after any request is the same increasing function of
    one integer, `weighted_free`, so keeping them sorted by it lets the first node that
    fits, from either end, be the best one (names break ties, as in `choose_node`).
    """

    def __init__(self, cpu_millis: int, memory_mb: int, gpu: int, labels: Mapping[str, str]):
        self.labels = labels
        capacities = [c for c in (cpu_millis, memory_mb, gpu) if c]
        common = math.lcm(*capacities) if capacities else 1
        # free_fraction_after(node, r) == (weighted_free(node) - weighted(r)) / denominator
        self.weights = tuple(common // c if c else 0 for c in (cpu_millis, memory_mb, gpu))
        self.denominator = common * max(len(capacities), 1)
        self.emptiest_last: list[tuple[int, str, NodeSlot]] = []  # binpack scans from the start
        self.emptiest_first: list[tuple[int, str, NodeSlot]] = []  # spread scans from the start

    def weighted(self, cpu_millis: int, memory_mb: int, gpu: int) -> int:
        w_cpu, w_memory, w_gpu = self.weights
        return cpu_millis * w_cpu + memory_mb * w_memory + gpu * w_gpu

    def weighted_free(self, node: NodeSlot) -> int:
        return self.weighted(node.free_cpu_millis, node.free_memory_mb, node.free_gpu)

    def add(self, node: NodeSlot) -> None:
        free = self.weighted_free(node)
        insort(self.emptiest_last, (free, node.name, node))
        insort(self.emptiest_first, (-free, node.name, node))

    def remove(self, node: NodeSlot, free: int) -> None:
        del self.emptiest_last[bisect_left(self.emptiest_last, (free, node.name))]
        del self.emptiest_first[bisect_left(self.emptiest_first, (-free, node.name))]

    def first_fit(
        self, request: Request, strategy: Strategy, excluding: Collection[int] = frozenset()
    ) -> NodeSlot | None:
        entries = self.emptiest_last if strategy is Strategy.BINPACK else self.emptiest_first
        for _, _, node in entries:
            if fits_now(node, request) and node.id not in excluding:
                return node
        return None


class NodeIndex:
    """Ready nodes arranged so that choosing does not look at every node for every job.

    `choose` answers exactly what `choose_node` answers over the same nodes, as long as
    every request is at least `smallest` in each resource: nodes that cannot hold that
    much are left out, since they can take nothing more this cycle. Free capacity only
    shrinks within a cycle, so a request that found no node finds none later either.
    """

    def __init__(self, nodes: Iterable[NodeSlot], smallest: Request):
        self.smallest = smallest
        self.all_labels: list[Mapping[str, str]] = []
        self.shapes: dict[tuple, _Shape] = {}
        self.shape_of: dict[int, _Shape] = {}
        self._shapes_for: dict[tuple, list[_Shape]] = {}
        self._unplaced: dict[tuple, Unplaced] = {}
        for node in nodes:
            self.all_labels.append(node.labels)
            shape_key = (node.cpu_millis, node.memory_mb, node.gpu, selector_key(node.labels))
            shape = self.shapes.get(shape_key)
            if shape is None:
                shape = self.shapes[shape_key] = _Shape(
                    node.cpu_millis, node.memory_mb, node.gpu, node.labels
                )
            self.shape_of[node.id] = shape
            if fits_now(node, smallest):
                shape.add(node)

    def shapes_for(self, selector: Mapping[str, str]) -> list[_Shape]:
        key = selector_key(selector)
        shapes = self._shapes_for.get(key)
        if shapes is None:
            shapes = self._shapes_for[key] = [
                shape
                for shape in self.shapes.values()
                if all(shape.labels.get(k) == v for k, v in selector.items())
            ]
        return shapes

    def choose(
        self,
        request: Request,
        strategy: Strategy = Strategy.BINPACK,
        excluding: Collection[int] = frozenset(),
    ) -> NodeSlot | Unplaced:
        """`choose_node` over the nodes, leaving out those whose ids are in `excluding`."""
        known = self._unplaced.get(request.key)
        if known is not None:
            return known
        best: NodeSlot | None = None
        best_score = (0, 1)  # numerator, denominator of free_fraction_after
        for shape in self.shapes_for(request.node_selector):
            node = shape.first_fit(request, strategy, excluding)
            if node is None:
                continue
            score = (
                shape.weighted_free(node)
                - shape.weighted(request.cpu_millis, request.memory_mb, request.gpu),
                shape.denominator,
            )
            if best is None or _better(score, node.name, best_score, best.name, strategy):
                best, best_score = node, score
        if best is not None:
            return best
        if request.node_selector and not self.shapes_for(request.node_selector):
            reason = Unplaced.NODE_SELECTOR
        else:
            reason = Unplaced.INSUFFICIENT_CAPACITY
        if not excluding:  # an excluded node may still take it
            self._unplaced[request.key] = reason
        return reason

    def take(self, node: NodeSlot, request: Request) -> None:
        shape = self.shape_of[node.id]
        shape.remove(node, shape.weighted_free(node))
        node.take(request)
        if fits_now(node, self.smallest):
            shape.add(node)

    def give_back(self, node: NodeSlot, request: Request) -> None:
        """Undo a `take` of the request on the node."""
        shape = self.shape_of[node.id]
        if fits_now(node, self.smallest):
            shape.remove(node, shape.weighted_free(node))
        node.take(Request(-request.cpu_millis, -request.memory_mb, -request.gpu))
        if fits_now(node, self.smallest):
            shape.add(node)

    def choose_gang(
        self,
        request: Request,
        tasks: int,
        strategy: Strategy = Strategy.BINPACK,
        excluding: Collection[int] = frozenset(),
    ) -> list[NodeSlot] | Unplaced:
        """Nodes for each of a gang's `tasks` (in task order), each chosen as `choose`
        would after the ones before were taken, and taken; or, when they do not all fit,
        why, with nothing taken. Several tasks may share a node."""
        cached = request.key in self._unplaced
        taken: list[NodeSlot] = []
        for _ in range(tasks):
            choice = self.choose(request, strategy, excluding)
            if isinstance(choice, Unplaced):
                for node in reversed(taken):
                    self.give_back(node, request)
                if not taken:
                    return (
                        choice if choice is Unplaced.NODE_SELECTOR else Unplaced.GANG_DOES_NOT_FIT
                    )
                if not cached:  # true only of the room the gang itself had taken
                    self._unplaced.pop(request.key, None)
                return Unplaced.GANG_DOES_NOT_FIT
            self.take(choice, request)
            taken.append(choice)
        return taken


def _better(score, name, best_score, best_name, strategy: Strategy) -> bool:
    """Is (score, name) better than the best so far? Scores compare as exact fractions."""
    left = score[0] * best_score[1]
    right = best_score[0] * score[1]
    if left == right:
        return name < best_name
    return left < right if strategy is Strategy.BINPACK else left > right


# --- Queues and fair share ------------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    cpu_millis: int = 0
    memory_mb: int = 0
    gpu: int = 0

    def __add__(self, other: "Resources | Request") -> "Resources":
        return Resources(
            self.cpu_millis + other.cpu_millis,
            self.memory_mb + other.memory_mb,
            self.gpu + other.gpu,
        )


@dataclass
class QueueState:
    """A queue as the planner sees it: its rules and what its jobs hold now."""

    id: int
    name: str
    weight: int = 1
    priority: int = 0
    strategy: Strategy = Strategy.BINPACK
    # Most its jobs may hold at once; None is no limit.
    quota_cpu_millis: int | None = None
    quota_memory_mb: int | None = None
    quota_gpu: int | None = None
    allocated: Resources = field(default_factory=Resources)
    # What it used over the last days, as a share of the cluster (see
    # jobs.services.fair_share); 0 unless FAIR_SHARE_HALF_LIFE_DAYS is set.
    past_share: Fraction = Fraction(0)
    # What each team's jobs in it hold now (team id -> amounts), each team's fair share
    # weight (team id -> weight; 1 where left out) and its past share (of the cluster, in
    # every queue; 0 where left out), for the order of its jobs: see `_Backlog`.
    team_allocated: dict[Hashable, Resources] = field(default_factory=dict)
    team_weights: dict[Hashable, int] = field(default_factory=dict)
    team_past_shares: dict[Hashable, Fraction] = field(default_factory=dict)

    def take(self, team_id: Hashable, request: "Resources | Request") -> None:
        """Count a placement of the team's in what the queue, and the team in it, hold."""
        self.allocated += request
        self.team_allocated[team_id] = self.team_allocated.get(team_id, Resources()) + request

    def within_quota(self, request: Request) -> bool:
        after = self.allocated + request
        return all(
            limit is None or used <= limit
            for used, limit in (
                (after.cpu_millis, self.quota_cpu_millis),
                (after.memory_mb, self.quota_memory_mb),
                (after.gpu, self.quota_gpu),
            )
        )


def dominant_share(allocated: Resources, capacity: Resources) -> Fraction:
    """The largest share of the cluster the queue holds in any one resource (DRF)."""
    shares = [
        Fraction(used, total)
        for used, total in (
            (allocated.cpu_millis, capacity.cpu_millis),
            (allocated.memory_mb, capacity.memory_mb),
            (allocated.gpu, capacity.gpu),
        )
        if total
    ]
    return max(shares, default=Fraction(0))


def queue_rank(queue: QueueState, capacity: Resources) -> tuple:
    """Sort key: the queue to serve first sorts first.

    Higher queue priority first; then the queue furthest below its deserved share, that
    is the lowest dominant share per unit of weight (a queue's deserved share is its
    weight over the weights of the queues that want more, so ordering by share over
    weight is ordering by share over deserved share), its share being what it holds now
    plus its `past_share`; then by name.
    """
    share = dominant_share(queue.allocated, capacity)
    if queue.past_share:
        share += queue.past_share
    return (-queue.priority, share / queue.weight, queue.name)


@dataclass(frozen=True)
class PendingJob:
    id: int
    queue_id: int
    request: Request
    # Jobs with the same limit key share the slots `plan_placements` is given for it.
    limit_key: Hashable | None = None
    # The longest it may run once started, in seconds (its timeout, or its queue's
    # default); None is no limit.
    time_limit: float | None = None
    # A gang of this many tasks, each asking for `request`: placed all together or not at all.
    tasks: int = 1
    team_id: Hashable | None = None
    priority: int = 0

    @property
    def total(self) -> Request:
        """What all its tasks ask for together (on no one node: for quotas)."""
        request, n = self.request, self.tasks
        return Request(request.cpu_millis * n, request.memory_mb * n, request.gpu * n)


# --- Reservation and backfill ---------------------------------------------------------
#
# The first job in the planning order that finds no room gets a reservation: the room
# the running executions' time limits free soonest, and that time. For a single job it
# is one node; for a gang, room for all its tasks at once, on as many nodes as the
# queue's strategy spreads them over at that time. Later jobs may still start on a
# reserved node only if they cannot delay it: they end, by their own time limit, before
# the reserved start, or they take room the reserved job will not need even then (EASY
# backfill, as in Slurm's backfill scheduler).


@dataclass(frozen=True)
class Release:
    """Room a running execution gives back when its time limit ends it, at the latest."""

    at: float  # seconds since the epoch
    cpu_millis: int
    memory_mb: int
    gpu: int = 0


def could_hold(node: NodeSlot, request: Request) -> bool:
    """Would the node hold the request with nothing else on it?"""
    return (
        request.cpu_millis <= node.cpu_millis
        and request.memory_mb <= node.memory_mb
        and request.gpu <= node.gpu
        and matches_selector(node, request.node_selector)
    )


def expected_start(
    node: NodeSlot, request: Request, releases: Sequence[Release], now: float
) -> float | None:
    """When the node will have room for the request at the latest, going by the time
    limits of what runs on it (`releases` must cover all of it); None if never."""
    if not could_hold(node, request):
        return None
    wanted = astuple_request(request)
    free = [node.free_cpu_millis, node.free_memory_mb, node.free_gpu]
    if all(f >= w for f, w in zip(free, wanted, strict=True)):
        return now
    for release in sorted(releases, key=lambda r: r.at):
        free = _plus(free, release)
        if all(f >= w for f, w in zip(free, wanted, strict=True)):
            return max(release.at, now)
    return None


def fit_count(free: Sequence[int], request: Request, most: int) -> int:
    """How many copies of the request fit in `free` (cpu, memory, gpu), up to `most`."""
    counts = [max(f, 0) // w for f, w in zip(free, astuple_request(request), strict=True) if w > 0]
    return min([most, *counts])


@dataclass
class Reservation:
    """Room held for `job` from `starts_at` on: on each of its nodes, room for the number
    of its tasks in `tasks_on` (one, for a single job), and `spare`, what each of those
    nodes has free then beyond that. `nodes` are in the order its tasks would go."""

    job: PendingJob
    nodes: list[NodeSlot]
    starts_at: float
    tasks_on: dict[int, int]  # node id -> tasks
    spare: dict[int, Resources]  # node id -> free at starts_at beyond the tasks

    @property
    def node(self) -> NodeSlot:
        """The node of its first task: the one the job's record names."""
        return self.nodes[0]

    @property
    def task_node_ids(self) -> list[int]:
        """The node of each of its tasks, those on one node together."""
        return [node.id for node in self.nodes for _ in range(self.tasks_on[node.id])]

    def ends_before(self, job: PendingJob, now: float) -> bool:
        """Will the job, started now, have ended by its own limit at the reserved start?"""
        return job.time_limit is not None and now + job.time_limit <= self.starts_at

    def admits(self, job: PendingJob, now: float, node: NodeSlot) -> bool:
        """May the job start on the node now without delaying the reservation?"""
        spare = self.spare.get(node.id)
        if spare is None or self.ends_before(job, now):
            return True
        request = job.request
        return (
            request.cpu_millis <= spare.cpu_millis
            and request.memory_mb <= spare.memory_mb
            and request.gpu <= spare.gpu
        )

    def held_off(self, job: PendingJob, now: float) -> frozenset[int]:
        """The ids of the reserved nodes the job may not start on now."""
        return frozenset(node.id for node in self.nodes if not self.admits(job, now, node))

    def take(self, job: PendingJob, now: float, node: NodeSlot) -> None:
        """The job starts on the node: what it holds at the reserved start is spare no more."""
        spare = self.spare.get(node.id)
        if spare is None or self.ends_before(job, now):
            return
        self.spare[node.id] = Resources(
            spare.cpu_millis - job.request.cpu_millis,
            spare.memory_mb - job.request.memory_mb,
            spare.gpu - job.request.gpu,
        )


def reserve(
    job: PendingJob,
    nodes: Iterable[NodeSlot],
    releases: Mapping[int, Sequence[Release]],
    now: float,
) -> Reservation | None:
    """The reservation for a job that found no room: the node (of those in `releases`,
    whose running executions all have time limits) with the earliest expected start,
    ties to the lower name; None if no such node can ever hold it."""
    best: tuple[float, str, NodeSlot] | None = None
    for node in nodes:
        if node.id not in releases:
            continue
        start = expected_start(node, job.request, releases[node.id], now)
        if start is not None and (best is None or (start, node.name) < best[:2]):
            best = (start, node.name, node)
    if best is None:
        return None
    start, _, node = best
    return reservation_on(job, node, 1, start, releases[node.id])


def reservation_on(
    job: PendingJob, node: NodeSlot, tasks: int, starts_at: float, releases: Sequence[Release]
) -> Reservation:
    """A reservation's part on one node: room for `tasks` of the job's tasks from
    `starts_at` on, and what the node has free then beyond them (by the time limits of
    what runs on it, `releases`), which jobs that end later may still use."""
    free = [node.free_cpu_millis, node.free_memory_mb, node.free_gpu]
    for release in releases:
        if release.at <= starts_at:
            free = _plus(free, release)
    wanted = astuple_request(job.request)
    spare = Resources(*(f - tasks * w for f, w in zip(free, wanted, strict=True)))
    return Reservation(job, [node], starts_at, {node.id: tasks}, {node.id: spare})


def reserve_gang(
    job: PendingJob,
    nodes: Iterable[NodeSlot],
    releases: Mapping[int, Sequence[Release]],
    now: float,
    strategy: Strategy = Strategy.BINPACK,
) -> Reservation | None:
    """The reservation for a gang that found no room: the earliest time at which, by the
    time limits of what runs on the nodes in `releases`, those nodes have room for all
    its tasks at once, and the nodes `NodeIndex.choose_gang` would give them then (by
    `strategy`); None if they never will. Nodes running anything without a limit take
    no part, as for a single job."""
    request, tasks = job.request, job.tasks
    usable = [node for node in nodes if node.id in releases and could_hold(node, request)]
    whole = [(node.cpu_millis, node.memory_mb, node.gpu) for node in usable]
    if sum(fit_count(room, request, tasks) for room in whole) < tasks:
        return None
    free = {node.id: [node.free_cpu_millis, node.free_memory_mb, node.free_gpu] for node in usable}
    fits = {node_id: fit_count(room, request, tasks) for node_id, room in free.items()}
    total = sum(fits.values())
    ends = sorted(
        ((release.at, node.id, release) for node in usable for release in releases[node.id]),
        key=lambda end: (end[0], end[1]),
    )
    start, taken = now, 0
    # Time moves on release by release until the tasks fit, then takes in every release
    # due by then, as `reserve` does.
    while taken < len(ends) and (total < tasks or max(ends[taken][0], now) <= start):
        at, node_id, release = ends[taken]
        taken += 1
        free[node_id] = _plus(free[node_id], release)
        total -= fits[node_id]
        fits[node_id] = fit_count(free[node_id], request, tasks)
        total += fits[node_id]
        start = max(start, at)
    if total < tasks:  # what runs there does not add up to the nodes' capacity
        return None
    at_start = [
        replace(
            node,
            free_cpu_millis=free[node.id][0],
            free_memory_mb=free[node.id][1],
            free_gpu=free[node.id][2],
        )
        for node in usable
    ]
    chosen = NodeIndex(at_start, request).choose_gang(request, tasks, strategy)
    if not isinstance(chosen, list):  # the count above says they fit: a broken snapshot
        return None
    by_id = {node.id: node for node in usable}
    tasks_on: dict[int, int] = {}
    for slot in chosen:
        tasks_on[slot.id] = tasks_on.get(slot.id, 0) + 1
    spare = {
        slot.id: Resources(slot.free_cpu_millis, slot.free_memory_mb, slot.free_gpu)
        for slot in at_start
        if slot.id in tasks_on
    }
    return Reservation(job, [by_id[node_id] for node_id in tasks_on], start, tasks_on, spare)


def _plus(free: Sequence[int], release: Release) -> list[int]:
    return [free[0] + release.cpu_millis, free[1] + release.memory_mb, free[2] + release.gpu]


@dataclass
class Plan:
    # A gang's tasks come one after another, in task order.
    placements: list[tuple[PendingJob, NodeSlot]] = field(default_factory=list)
    waiting: dict[int, Unplaced] = field(default_factory=dict)  # job id -> why
    reservation: Reservation | None = None
    # Jobs held back (WOULD_DELAY_RESERVATION): job id -> the reserved job's id.
    held: dict[int, int] = field(default_factory=dict)


def smallest_request(requests: Iterable[Request]) -> Request:
    requests = list(requests)
    return Request(
        min((r.cpu_millis for r in requests), default=0),
        min((r.memory_mb for r in requests), default=0),
        min((r.gpu for r in requests), default=0),
    )


def plan_placements(
    *,
    jobs: Sequence[PendingJob],
    queues: Mapping[int, QueueState],
    nodes: Iterable[NodeSlot],
    capacity: Resources,
    limit_slots: MutableMapping[Hashable, int] | None = None,
    releases: Mapping[int, Sequence[Release]]
    | Callable[[], Mapping[int, Sequence[Release]]]
    | None = None,
    now: float = 0.0,
    reservation: Reservation | None = None,
) -> Plan:
    """Place pending jobs, serving queues by fair share and each queue's jobs in order.

    `jobs` come in each queue's order (priority, then deadline, then age). The queue
    ranked first by `queue_rank` offers its next job, its teams' next jobs taken in the
    order of `_Backlog` (priority, then the team holding the least for its weight
    first); a job over its queue's quota, or that no node can take, waits with the
    reason and the queue offers its next one (a smaller job may still fit); a placed job
    raises its queue's share, which may let another queue go first. A job whose
    `limit_key` has no slot left in `limit_slots` (keys not in it have no limit) waits
    too. `queues`, `nodes` and `limit_slots` are updated in place with what was placed.

    With `releases` (node id -> when its running executions end by their time limits;
    a node left out has one with no limit), the first job (or gang) that finds no room
    gets a `Reservation`, and no later job starts on a reserved node if it would delay
    it (see `Reservation.admits`): such a job goes elsewhere, or waits. `releases` may
    be a function, called only when a job first finds no room. A `reservation` given
    (made earlier, for a job not among `jobs`) is honoured as one the plan made.
    """
    limit_slots = {} if limit_slots is None else limit_slots
    plan = Plan(reservation=reservation)
    nodes = list(nodes)
    index = NodeIndex(nodes, smallest_request(job.request for job in jobs))
    ends = _Ends(releases, now)
    unreservable: set[tuple] = set()  # (request key, tasks) no node can be reserved for
    backlog: dict[int, _Backlog] = {}
    for order, job in enumerate(jobs):
        backlog.setdefault(job.queue_id, _Backlog()).add(order, job)
    for qid, pending in backlog.items():
        pending.start(queues[qid], capacity)
    heap = [(queue_rank(queues[qid], capacity), qid) for qid in backlog]
    heapq.heapify(heap)
    while heap:
        rank, qid = heap[0]
        queue, pending = queues[qid], backlog[qid]
        job = pending.pop()
        reservation = plan.reservation
        if limit_slots.get(job.limit_key, 1) <= 0:
            plan.waiting[job.id] = Unplaced.CONCURRENCY_LIMIT
        elif not queue.within_quota(job.total):
            plan.waiting[job.id] = Unplaced.QUEUE_QUOTA
        elif job.tasks > 1:
            if _place_gang(job, queue, index, nodes, plan, ends, limit_slots, now, unreservable):
                rank = queue_rank(queue, capacity)
        else:
            held_off = frozenset() if reservation is None else reservation.held_off(job, now)
            choice = index.choose(job.request, queue.strategy, excluding=held_off)
            if isinstance(choice, Unplaced):
                held_back = choice is Unplaced.INSUFFICIENT_CAPACITY and any(
                    node.id in held_off
                    and fits_now(node, job.request)
                    and matches_selector(node, job.request.node_selector)
                    for node in (reservation.nodes if held_off else ())
                )
                _wait(job, queue, choice, held_back, nodes, plan, ends, now, unreservable)
            else:
                index.take(choice, job.request)
                if reservation is not None:
                    reservation.take(job, now, choice)
                ends.started(job, choice)
                if job.limit_key in limit_slots:
                    limit_slots[job.limit_key] -= 1
                queue.take(job.team_id, job.request)
                plan.placements.append((job, choice))
                rank = queue_rank(queue, capacity)
        pending.offered(job, queue, capacity)
        if pending:
            heapq.heapreplace(heap, (rank, qid))
        else:
            heapq.heappop(heap)
    return plan


class _Backlog:
    """A queue's pending jobs in the order the planner offers them: by priority; among
    jobs of equal priority, the team holding the least for its weight goes first (the
    lowest dominant share of the cluster that its jobs in this queue hold, plus the
    team's past share, over the team's fair share weight: fair share between the teams
    of a queue, as between queues); then in the order they were given (earliest
    deadline, then oldest). A team's place changes only when one of its own jobs is
    placed, so each team has one entry in a heap, keyed by its next job."""

    def __init__(self):
        self._teams: dict[Hashable, list[tuple[int, PendingJob]]] = {}
        self._heap: list[tuple[int, Fraction, int, Hashable]] = []

    def add(self, order: int, job: PendingJob) -> None:
        self._teams.setdefault(job.team_id, []).append((order, job))

    def start(self, queue: QueueState, capacity: Resources) -> None:
        for team_id, jobs in self._teams.items():
            jobs.reverse()  # pop() from the end takes them in order
            self._push(team_id, queue, capacity)

    def _push(self, team_id: Hashable, queue: QueueState, capacity: Resources) -> None:
        order, job = self._teams[team_id][-1]
        share = 0  # a queue of one team: its jobs in order, with no share to work out
        if len(self._teams) > 1:
            share = dominant_share(queue.team_allocated.get(team_id, Resources()), capacity)
            share += queue.team_past_shares.get(team_id, 0)
            share /= queue.team_weights.get(team_id, 1)
        heapq.heappush(self._heap, (-job.priority, share, order, team_id))

    def pop(self) -> PendingJob:
        """The next job; `offered` must follow once it has been placed or left waiting."""
        team_id = self._heap[0][-1]
        return self._teams[team_id].pop()[1]

    def offered(self, job: PendingJob, queue: QueueState, capacity: Resources) -> None:
        heapq.heappop(self._heap)
        if self._teams[job.team_id]:
            self._push(job.team_id, queue, capacity)

    def __bool__(self) -> bool:
        return bool(self._heap)


def _place_gang(job, queue, index, nodes, plan, ends, limit_slots, now, unreservable) -> bool:
    """Place all of a gang's tasks, or record why it waits. It starts on a reserved node
    only when all its tasks there together would not delay the reserved job; the first
    job that finds no room may be a gang, which then gets the reservation."""
    reservation = plan.reservation
    held_off = frozenset()
    if reservation is not None:
        held_off = reservation.held_off(replace(job, request=job.total), now)
    choice = index.choose_gang(job.request, job.tasks, queue.strategy, excluding=held_off)
    if isinstance(choice, list):
        for node in choice:
            if reservation is not None:
                reservation.take(job, now, node)
            ends.started(job, node)
            queue.take(job.team_id, job.request)
            plan.placements.append((job, node))
        if job.limit_key in limit_slots:
            limit_slots[job.limit_key] -= 1
        return True
    held_back = False
    if choice is Unplaced.GANG_DOES_NOT_FIT and held_off:
        trial = index.choose_gang(job.request, job.tasks, queue.strategy)
        if isinstance(trial, list):  # it would fit but for the reservation: give it back
            for node in reversed(trial):
                index.give_back(node, job.request)
            held_back = True
    _wait(job, queue, choice, held_back, nodes, plan, ends, now, unreservable)
    return False


def _wait(job, queue, choice, held_back, nodes, plan, ends, now, unreservable) -> None:
    """Record why a job (or gang) that found no room (`choice`) waits: held back, when
    it would fit but for the reservation; or given the reservation, as the first that
    finds no room; or `choice`."""
    if held_back:
        plan.waiting[job.id] = Unplaced.WOULD_DELAY_RESERVATION
        plan.held[job.id] = plan.reservation.job.id
    elif (
        plan.reservation is None
        and choice in (Unplaced.INSUFFICIENT_CAPACITY, Unplaced.GANG_DOES_NOT_FIT)
        and (found := _reserve_once(job, queue, nodes, ends, plan, now, unreservable))
    ):
        plan.reservation = found
        plan.waiting[job.id] = Unplaced.RESERVATION
    else:
        plan.waiting[job.id] = choice


def astuple_request(request: Request) -> tuple[int, int, int]:
    return request.cpu_millis, request.memory_mb, request.gpu


def _reserve_once(job, queue, nodes, ends, plan, now, unreservable) -> Reservation | None:
    """The job's reservation, if one can be made (see `reserve` and `reserve_gang`).
    A job whose request (and tasks) no node with known end times could take is
    remembered in `unreservable`: those nodes only grow fewer as the plan goes."""
    key = (job.request.key, job.tasks)
    if not ends.wanted or key in unreservable:
        return None
    found = None
    if any(could_hold(node, job.request) for node in nodes):  # else: no need to read ends
        if job.tasks == 1:
            found = reserve(job, nodes, ends.known(plan), now)
        else:
            found = reserve_gang(job, nodes, ends.known(plan), now, queue.strategy)
    if found is None:
        unreservable.add(key)
    return found


class _Ends:
    """The releases of each node as a plan goes: what ran before it, and what it starts,
    each ending by its time limit; read when first needed."""

    def __init__(self, releases, now: float):
        self.wanted = releases is not None
        self._source = releases
        self._now = now
        self._by_node: dict[int, list[Release]] | None = None

    def known(self, plan: Plan) -> dict[int, list[Release]]:
        if self._by_node is None:
            source = self._source() if callable(self._source) else self._source
            self._by_node = {node_id: list(ends) for node_id, ends in source.items()}
            for job, node in plan.placements:
                self.started(job, node)
        return self._by_node

    def started(self, job: PendingJob, node: NodeSlot) -> None:
        if self._by_node is None or node.id not in self._by_node:
            return
        if job.time_limit is None:
            del self._by_node[node.id]  # its end is unknown from now on
        else:
            release = Release(self._now + job.time_limit, *astuple_request(job.request))
            self._by_node[node.id].append(release)
