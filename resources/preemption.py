"""Preemption: which running executions to stop so that a waiting job fits. Pure
functions over a snapshot, like `resources.placement`.

A job that found no room may take a node's room from running executions that are
`preemptible` and of lower priority. Victim order puts first the lowest priority, then
the most recently started (the least work lost). On each node that could hold the job,
the victims are the fewest executions that make room for it; of the sets that size, the
one whose last victim in victim order comes earliest, then its second-to-last, and so on
(`victims_on_node` says so exactly, and what holds on a node with many candidates). Of
the nodes, the one with the fewest victims wins, then the lowest victim priority, then
the lower name.

Reclaim: a queue's deserved share of the cluster is its weight over the weights of the
queues with work (running or waiting), as the fair-share order has it. A job whose
queue, with it, stays within its deserved share may also evict preemptible executions
of any priority from queues that hold more than theirs (Kueue's reclaim within a cohort;
here the cohort is the whole cluster, and there is no quota below which a queue is
guaranteed more).
"""

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from .placement import (
    NodeSlot,
    PendingJob,
    QueueState,
    Resources,
    could_hold,
    dominant_share,
    fits_now,
    matches_selector,
)


@dataclass(frozen=True)
class Running:
    """A running execution as preemption sees it."""

    id: int
    job_id: int
    node_id: int
    queue_id: int
    priority: int
    preemptible: bool
    started_at: float  # seconds since the epoch
    cpu_millis: int
    memory_mb: int
    gpu: int = 0

    @property
    def held(self) -> Resources:
        return Resources(self.cpu_millis, self.memory_mb, self.gpu)


@dataclass(frozen=True)
class Waiting:
    """A job that found no room, with its priority."""

    job: PendingJob
    priority: int


@dataclass(frozen=True)
class Preemption:
    """Stop `victims` on `node` so that `job` fits there."""

    job: PendingJob
    node: NodeSlot
    victims: tuple[Running, ...]


def victim_order(execution: Running) -> tuple:
    """Sort key: the first to evict sorts first (lowest priority, then newest)."""
    return (execution.priority, -execution.started_at, -execution.id)


def room_after(node: NodeSlot, victims: Iterable[Running]) -> Resources:
    room = Resources(node.free_cpu_millis, node.free_memory_mb, node.free_gpu)
    for victim in victims:
        room = room + victim.held
    return room


def holds(room: Resources, job: PendingJob) -> bool:
    request = job.request
    return (
        request.cpu_millis <= room.cpu_millis
        and request.memory_mb <= room.memory_mb
        and request.gpu <= room.gpu
    )


def victims_on_node(
    node: NodeSlot, job: PendingJob, candidates: Sequence[Running]
) -> tuple[Running, ...] | None:
    """The victims to evict on `node` for `job` (`candidates`: the executions on it the
    job may evict), in victim order; None when evicting them all would not make room.

    They are the fewest that make room. Of the sets that size, the one whose last victim
    in victim order comes earliest; on a tie, the one whose second-to-last does, and so
    on (the set with the smallest sum of 2**position, positions counted in victim order
    from 0). So among the fewest, the highest priority stopped is as low as it can be, as
    `plan_preemptions` prefers, among nodes, the one whose highest victim priority is lowest.

    Exact with at most `FEWEST_EXACT_UP_TO` candidates, and with more whenever the search
    ends within `FEWEST_SEARCH_STEPS` steps, as it does on the usual node, whose
    executions come in a few shapes. Cut short, it falls back to greedy-then-spare: the
    earliest in victim order until the job fits, less any victim it can do without (from
    the last taken), so still no victim for nothing, though not always the fewest.
    """
    short = _shortfall(node, job)
    if not any(short):
        return ()
    # Each candidate as what it holds of what the job lacks, counted up to the shortfall:
    # one that holds none of it is never needed, and two alike in this are interchangeable.
    useful: list[Running] = []
    shapes: list[_Vector] = []
    for candidate in sorted(candidates, key=victim_order):
        held = candidate.held
        shape = (
            min(held.cpu_millis, short[0]),
            min(held.memory_mb, short[1]),
            min(held.gpu, short[2]),
        )
        if any(shape):
            useful.append(candidate)
            shapes.append(shape)
    if not _enough([sum(shape[resource] for shape in shapes) for resource in range(3)], short):
        return None
    return tuple(useful[position] for position in _fewest(shapes, short))


# The search for the fewest victims on a node gives up after FEWEST_SEARCH_STEPS steps
# (a step: one candidate left out, to be taken on the way back), unless there are at
# most FEWEST_EXACT_UP_TO candidates: with n, it tries at most n sizes of at most
# 2**n - 1 steps each, 10,230 in all for 10, and ends exact.
FEWEST_SEARCH_STEPS = 2_000
FEWEST_EXACT_UP_TO = 10

_Vector = tuple[int, int, int]  # cpu_millis, memory_mb, gpu


def _shortfall(node: NodeSlot, job: PendingJob) -> _Vector:
    """What the job lacks on the node: its request less the room free there."""
    request = job.request
    return (
        max(request.cpu_millis - node.free_cpu_millis, 0),
        max(request.memory_mb - node.free_memory_mb, 0),
        max(request.gpu - node.free_gpu, 0),
    )


def _enough(total: Sequence[int], short: _Vector) -> bool:
    return total[0] >= short[0] and total[1] >= short[1] and total[2] >= short[2]


def _greedy_then_spare(shapes: Sequence[_Vector], short: _Vector) -> list[int]:
    """The earliest in victim order until they cover the shortfall, less any that can
    be spared (from the last taken): no victim for nothing, but not always the fewest."""
    chosen: list[int] = []
    total = [0, 0, 0]
    for position, shape in enumerate(shapes):
        if _enough(total, short):
            break
        chosen.append(position)
        total = [held + amount for held, amount in zip(total, shape, strict=True)]
    for position in reversed(list(chosen)):
        rest = [held - amount for held, amount in zip(total, shapes[position], strict=True)]
        if _enough(rest, short):
            chosen.remove(position)
            total = rest
    return chosen


def _fewest(shapes: Sequence[_Vector], short: _Vector) -> list[int]:
    """The positions of the victims `victims_on_node` chooses: for each size from a
    lower bound up, the first set of that size in the tie-break's order, if any."""
    greedy = _greedy_then_spare(shapes, short)
    if len(greedy) == 1:
        return greedy  # one victim is the fewest, and greedy takes the earliest that will do
    steps = None if len(shapes) <= FEWEST_EXACT_UP_TO else FEWEST_SEARCH_STEPS
    search = _FewestVictims(shapes, short, steps)
    # The bound cannot fail: greedy's set is within it.
    fewest = search.fewest_more(short, len(greedy)) or len(greedy)
    for size in range(fewest, len(greedy) + 1):
        # No set of greedy's size needs a victim after greedy's last.
        last = greedy[-1] if size == len(greedy) else len(shapes) - 1
        found = search.first_within(size, last)
        if found is not None:
            return found
        if search.spent:
            break
    return greedy


class _FewestVictims:
    """Depth-first search for the first set of at most `size` victims that covers the
    shortfall, in the tie-break's order: from the last candidate in victim order down,
    each is first left out, then taken.

    Candidates alike (of one shape) are taken earliest first: a set that takes a later
    one and leaves an earlier one is beaten, in the tie-break, by the set with the two
    swapped. So taking one takes the earlier ones of its shape with it, and leaving one
    out leaves the later ones out too. A branch is cut as soon as the candidates still
    open cannot cover what is lacking with the victims left to take, by a lower bound:
    under each of a few weightings of the resources (`_mixes`), how many of the largest
    holders it takes for their weighted sum to reach the weighted shortfall.
    """

    def __init__(self, shapes: Sequence[_Vector], short: _Vector, steps: int | None):
        self.short = short
        self.steps_left = steps  # None: no limit
        self.shape_of: list[int] = []  # per position: its shape's index
        self.earlier: list[int] = []  # per position: how many of its shape come before it
        self.shapes: list[_Vector] = []
        self.counts: list[int] = []  # per shape: how many candidates have it
        index: dict[_Vector, int] = {}
        for shape in shapes:
            which = index.setdefault(shape, len(self.shapes))
            if which == len(self.shapes):
                self.shapes.append(shape)
                self.counts.append(0)
            self.shape_of.append(which)
            self.earlier.append(self.counts[which])
            self.counts[which] += 1
        # Per shape, while searching: how many are open (not passed yet, nor decided with
        # a later one of the shape), and how many are taken.
        self.open = list(self.counts)
        self.taken = [0] * len(self.shapes)
        self.rankings: list[tuple[_Vector, list[tuple[int, int]]]] = []
        for weights in _mixes(short):
            w0, w1, w2 = weights
            scores = [w0 * a0 + w1 * a1 + w2 * a2 for a0, a1, a2 in self.shapes]
            ranked = sorted(((s, which) for which, s in enumerate(scores) if s), reverse=True)
            self.rankings.append((weights, ranked))

    @property
    def spent(self) -> bool:
        return self.steps_left is not None and self.steps_left < 0

    def fewest_more(self, short: Sequence[int], most: int) -> int | None:
        """How many more victims, at least, of the shapes still open cover `short`; None
        when the open ones cannot with `most`."""
        fewest = 0
        s0, s1, s2 = max(short[0], 0), max(short[1], 0), max(short[2], 0)
        for (w0, w1, w2), ranked in self.rankings:
            lacking = w0 * s0 + w1 * s1 + w2 * s2
            count = 0
            for score, which in ranked:
                if lacking <= 0 or count > most:
                    break
                if self.open[which]:
                    take = min(self.open[which], -(-lacking // score))
                    count += take
                    lacking -= take * score
            if lacking > 0 or count > most:
                return None
            fewest = max(fewest, count)
        return fewest

    def first_within(self, size: int, last: int) -> list[int] | None:
        """The positions of the first set (in the tie-break's order) of at most `size`
        victims, none after position `last`, that covers the shortfall; None when there
        is none, or the steps ran out."""
        self.open = [0] * len(self.shapes)
        self.taken = [0] * len(self.shapes)
        short = list(self.short)
        room = size
        # The search would leave out each one from `last` down while the bounds pass, and
        # they pass for every prefix longer than the shortest they pass for: find that one
        # from below, which is quicker when the set comes early, as it mostly does.
        position = -1
        while position < last:
            position += 1
            self.open[self.shape_of[position]] += 1
            if self.fewest_more(short, room) is not None:
                break
        else:
            return None
        # (position, taken), the latest decision last.
        decided = [(later, False) for later in range(last, position, -1)]
        while True:
            # Past the ones whose shape is decided: taken with a later one, or left out.
            while position >= 0 and not self.open[self.shape_of[position]]:
                position -= 1
            if all(lacking <= 0 for lacking in short):
                taken = self.taken
                return [p for p, w in enumerate(self.shape_of) if self.earlier[p] < taken[w]]
            if position >= 0 and self.fewest_more(short, room) is not None:
                if self.steps_left is not None:
                    self.steps_left -= 1
                    if self.steps_left < 0:
                        return None
                self.open[self.shape_of[position]] -= 1  # leave it out
                decided.append((position, False))
                position -= 1
                continue
            # A dead end: back to the latest one left out that there is room to take.
            while decided:
                position, taken = decided.pop()
                which = self.shape_of[position]
                shape = self.shapes[which]
                if taken:
                    count = self.taken[which]
                    self.open[which], self.taken[which] = count, 0
                    room += count
                    for resource in range(3):
                        short[resource] += count * shape[resource]
                    continue
                self.open[which] += 1
                count = self.open[which]  # it and the earlier ones of its shape
                if count <= room:
                    self.open[which], self.taken[which] = 0, count
                    room -= count
                    for resource in range(3):
                        short[resource] -= count * shape[resource]
                    decided.append((position, True))
                    position -= 1
                    break
            else:
                return None


def _mixes(short: _Vector) -> list[_Vector]:
    """Weights of the resources for the search's bounds: each lacking resource alone;
    each two of them as shares of what is lacking, evenly and 1:3 either way (where the
    ones that hold much of one hold little of the other); all three evenly."""
    lacking = [resource for resource in range(3) if short[resource]]
    unit = math.lcm(*(short[resource] for resource in lacking))
    share = [unit // amount if amount else 0 for amount in short]
    mixes: list[_Vector] = []
    for resource in lacking:
        mixes.append(_weights({resource: 1}))
    for one, other in itertools.combinations(lacking, 2):
        for a, b in ((1, 1), (1, 3), (3, 1)):
            mixes.append(_weights({one: a * share[one], other: b * share[other]}))
    if len(lacking) == 3:
        mixes.append((share[0], share[1], share[2]))
    return mixes


def _weights(by_resource: dict[int, int]) -> _Vector:
    return (by_resource.get(0, 0), by_resource.get(1, 0), by_resource.get(2, 0))


@dataclass
class Shares:
    """Queues' deserved shares and what they hold, for reclaim."""

    capacity: Resources
    queues: dict[int, QueueState]
    active: set[int] = field(default_factory=set)  # queues with work

    def deserved(self, queue_id: int) -> Fraction:
        weights = sum(self.queues[q].weight for q in self.active if q in self.queues)
        queue = self.queues.get(queue_id)
        if queue is None or not weights:
            return Fraction(0)
        return Fraction(queue.weight, weights)

    def share(self, queue_id: int, extra: Resources | None = None) -> Fraction:
        queue = self.queues.get(queue_id)
        if queue is None:
            return Fraction(0)
        held = queue.allocated if extra is None else queue.allocated + extra
        return dominant_share(held, self.capacity)

    def over(self, queue_id: int) -> bool:
        return self.share(queue_id) > self.deserved(queue_id)

    def within_quota(self, job: PendingJob) -> bool:
        queue = self.queues.get(job.queue_id)
        return queue is None or queue.within_quota(job.total)

    def may_reclaim(self, job: PendingJob) -> bool:
        return self.share(job.queue_id, _resources(job)) <= self.deserved(job.queue_id)

    def evicted(self, victim: Running) -> None:
        queue = self.queues.get(victim.queue_id)
        if queue is not None:
            held = victim.held
            queue.allocated = Resources(
                queue.allocated.cpu_millis - held.cpu_millis,
                queue.allocated.memory_mb - held.memory_mb,
                queue.allocated.gpu - held.gpu,
            )

    def started(self, job: PendingJob) -> None:
        queue = self.queues.get(job.queue_id)
        if queue is not None:
            queue.allocated = queue.allocated + job.request


def _resources(job: PendingJob) -> Resources:
    return Resources(job.request.cpu_millis, job.request.memory_mb, job.request.gpu)


def may_evict(victim: Running, waiting: Waiting, *, reclaim: bool, shares: Shares | None) -> bool:
    """May `waiting` evict `victim`? Only a preemptible one: of lower priority, or, when
    the job's queue may reclaim, of a queue above its deserved share."""
    if not victim.preemptible:
        return False
    if victim.priority < waiting.priority:
        return True
    return (
        reclaim
        and shares is not None
        and victim.queue_id != waiting.job.queue_id
        and shares.over(victim.queue_id)
    )


def _key_bound(node: NodeSlot, job: PendingJob, candidates: Sequence[Running]) -> tuple | None:
    """A lower bound on the key `plan_preemptions` ranks the node's victims by (how many,
    their highest priority, the node's name): for each resource the job lacks there, how
    many of its largest holders it takes, and the lowest priority among the candidates.
    None when all of them together would not make room."""
    fewest = 0
    for resource, lacking in enumerate(_shortfall(node, job)):
        if not lacking:
            continue
        count = 0
        holders = ((c.cpu_millis, c.memory_mb, c.gpu)[resource] for c in candidates)
        for held in sorted(holders, reverse=True):
            if lacking <= 0 or not held:
                break
            lacking -= held
            count += 1
        if lacking > 0:
            return None
        fewest = max(fewest, count)
    return (fewest, min(c.priority for c in candidates), node.name)


def plan_preemptions(
    *,
    waiting: Sequence[Waiting],
    nodes: Iterable[NodeSlot],
    running: Iterable[Running],
    shares: Shares | None = None,
    limit: int | None = None,
) -> list[Preemption]:
    """Preemptions for the waiting jobs, taken in the order given (highest priority
    first), up to `limit` of them. `nodes` are the ready nodes with what is free on
    them (room already held for other jobs taken off); `running` the executions that
    could be evicted. With `shares`, queues within their deserved share reclaim from
    queues above theirs (see the module's docstring). A victim is evicted for one job at
    most; `nodes` are updated in place with the room each preemption takes."""
    nodes = list(nodes)
    by_node: dict[int, list[Running]] = {}
    for execution in running:
        by_node.setdefault(execution.node_id, []).append(execution)
    taken: set[int] = set()
    preemptions: list[Preemption] = []
    for entry in waiting:
        if limit is not None and len(preemptions) >= limit:
            break
        job = entry.job
        usable = [
            node
            for node in nodes
            if matches_selector(node, job.request.node_selector) and could_hold(node, job.request)
        ]
        if any(fits_now(node, job.request) for node in usable):
            continue  # it fits as things are: placement's, not preemption's
        if shares is not None and not shares.within_quota(job):
            continue  # its queue holds its quota: room would not let it start
        reclaim = shares is not None and shares.may_reclaim(job)
        best: tuple | None = None
        for node in usable:
            candidates = [
                v
                for v in by_node.get(node.id, ())
                if v.id not in taken and may_evict(v, entry, reclaim=reclaim, shares=shares)
            ]
            if not candidates:
                continue
            # No set on this node can beat the best so far: a cheap bound on its key first.
            bound = _key_bound(node, job, candidates)
            if bound is None or (best is not None and bound >= best[0]):
                continue
            victims = victims_on_node(node, job, candidates)
            if not victims:  # None: no room even so; empty: it fits already
                continue
            key = (len(victims), max(v.priority for v in victims), node.name)
            if best is None or key < best[0]:
                best = (key, node, victims)
        if best is None:
            continue
        _, node, victims = best
        room = room_after(node, victims)
        node.free_cpu_millis = room.cpu_millis - job.request.cpu_millis
        node.free_memory_mb = room.memory_mb - job.request.memory_mb
        node.free_gpu = room.gpu - job.request.gpu
        taken.update(v.id for v in victims)
        if shares is not None:
            for victim in victims:
                shares.evicted(victim)
            shares.started(job)
        preemptions.append(Preemption(job, node, victims))
    return preemptions
