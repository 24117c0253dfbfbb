"""Preemption: which running executions to stop so that a waiting job fits. Pure
functions over a snapshot, like `resources.placement`.

A job that found no room may take a node's room from running executions that are
`preemptible` and of lower priority. On each node that could hold it, the victims are
taken lowest priority first, then most recently started (the least work lost), until
the job fits; then any victim it can do without is spared, so no victim is evicted for
nothing. Of the nodes, the one with the fewest victims wins, then the lowest victim
priority, then the lower name.

Reclaim: a queue's deserved share of the cluster is its weight over the weights of the
queues with work (running or waiting), as the fair-share order has it. A job whose
queue, with it, stays within its deserved share may also evict preemptible executions
of any priority from queues that hold more than theirs (Kueue's reclaim within a cohort;
here the cohort is the whole cluster, and there is no quota below which a queue is
guaranteed more).
"""

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
    job may evict), or None when evicting them all would not make room."""
    chosen: list[Running] = []
    for candidate in sorted(candidates, key=victim_order):
        if holds(room_after(node, chosen), job):
            break
        chosen.append(candidate)
    if not holds(room_after(node, chosen), job):
        return None
    # Spare, from the last taken, any victim the job can do without.
    for victim in reversed(list(chosen)):
        rest = [v for v in chosen if v is not victim]
        if holds(room_after(node, rest), job):
            chosen = rest
    return tuple(chosen)


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
        reclaim = shares is not None and shares.may_reclaim(job)
        best: tuple | None = None
        for node in usable:
            candidates = [
                v
                for v in by_node.get(node.id, ())
                if v.id not in taken and may_evict(v, entry, reclaim=reclaim, shares=shares)
            ]
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
