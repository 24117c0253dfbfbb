"""The scheduling cycle: place pending jobs on ready nodes, in one transaction.

Snapshot: lock the nodes, then each queue's next due pending jobs (SKIP LOCKED), as many
as the free room could take; read the queues and what their jobs hold now. Plan in
memory with `resources.placement`: queues by fair share, jobs by priority then age,
nodes by the queue's strategy. Write the executions, allocations, job statuses, node
counters and pending reasons in a fixed number of statements, commit once, then publish
one message per placement over one producer connection. The number of queries does not
grow with the number of jobs, queues or nodes, and a cycle that finds no room reads only
the jobs that have not been told why they wait.
"""

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from jobs.models import Job, JobExecution, JobStatus, PendingReason, execution_token
from jobs.services import claimed_execution, execution_publish_many
from nodes.models import Node, NodeStatus
from nodes.services import node_drain_complete
from scheduler_site.db import prepared_cursor

from .models import LIVE_ALLOCATION_STATUSES
from .placement import (
    NodeSlot,
    PendingJob,
    Plan,
    QueueState,
    Request,
    Resources,
    Strategy,
    plan_placements,
)
from .routing import routes_known

logger = logging.getLogger(__name__)

# Each queue's next `per_queue` pending jobs that are due, in its order, locked so that
# a second scheduler (or a cancel) skips them rather than waiting. Per queue, so that a
# long backlog in one queue cannot hide another queue's jobs from the fair-share order.
# With `reasons`, only jobs waiting for one of them ('' for the jobs no cycle has
# looked at yet). Served by the job_pending_by_queue index. Each row also carries its
# queue's rules and what the queue's jobs hold now, read after the node locks, so a
# cycle that ran just before (a leader that lost its lock mid-cycle) is seen once it
# has committed. That usage is summed over the live allocations only (their partial
# index), not filtered on the queues: a filter on the jobs' queue would let the planner
# start from every job of it.
PENDING_JOBS_SQL = """
SELECT j.id, j.queue_id, j.cpu_millis, j.memory_mb, j.gpu, j.node_selector, j.attempts,
       j.pending_reason, q.name, q.weight, q.priority, q.strategy, q.quota_cpu_millis,
       q.quota_memory_mb, q.quota_gpu, coalesce(usage.cpu_millis, 0),
       coalesce(usage.memory_mb, 0), coalesce(usage.gpu, 0)
FROM resources_queue q
CROSS JOIN LATERAL (
    SELECT id, queue_id, cpu_millis, memory_mb, gpu, node_selector, attempts, pending_reason,
           priority, created_at
    FROM jobs_job
    WHERE queue_id = q.id
      AND status = %(pending)s
      AND (not_before IS NULL OR not_before <= %(now)s)
      AND (%(reasons)s::text[] IS NULL OR pending_reason = ANY(%(reasons)s::text[]))
    ORDER BY priority DESC, created_at, id
    LIMIT %(per_queue)s
    FOR UPDATE SKIP LOCKED
) j
LEFT JOIN (
    SELECT job.queue_id, sum(a.cpu_millis) AS cpu_millis, sum(a.memory_mb) AS memory_mb,
           sum(a.gpu) AS gpu
      FROM resources_allocation a
      JOIN jobs_jobexecution e ON e.id = a.execution_id
      JOIN jobs_job job ON job.id = e.job_id
     WHERE a.status = ANY(%(live)s)
     GROUP BY job.queue_id
) AS usage ON usage.queue_id = q.id
ORDER BY q.id, j.priority DESC, j.created_at, j.id
"""


# A cycle reads, per queue, enough jobs to fill the free CPU if each asked for this
# much, at least MIN_JOBS_PER_QUEUE and at most the batch size. Reading (and locking)
# the whole backlog when a completion has freed one core would cost more than placing.
# A cycle that placed work and read a full window is followed by another at once.
TYPICAL_SMALL_JOB_CPU_MILLIS = 100
MIN_JOBS_PER_QUEUE = 256


def jobs_per_queue(*, free_cpu_millis: int, batch_size: int) -> int:
    wanted = math.ceil(free_cpu_millis / TYPICAL_SMALL_JOB_CPU_MILLIS)
    return min(batch_size, max(MIN_JOBS_PER_QUEUE, wanted))


@dataclass
class CycleResult:
    considered: int = 0
    placements: list[tuple[str, str]] = field(default_factory=list)  # (token, node name)
    waiting: dict[str, int] = field(default_factory=dict)  # reason -> jobs
    batch_full: bool = False  # some queue may have more due jobs than this cycle read
    full: bool = False  # no ready node had CPU free: only new arrivals were read

    @property
    def placed(self) -> int:
        return len(self.placements)

    @property
    def tokens(self) -> list[str]:
        return [token for token, _ in self.placements]


def run_cycle(*, batch_size: int) -> CycleResult:
    """One full cycle: settle drained nodes, place and commit, then publish."""
    node_drain_complete()
    started = time.perf_counter()
    result = place_pending_jobs(batch_size=batch_size)
    placed = time.perf_counter()
    # The router would look each token's node up in the database; this cycle has just
    # committed those allocations, so it tells the router instead.
    with routes_known(dict(result.placements)):
        execution_publish_many(tokens=result.tokens)
    if result.placed or result.waiting:
        logger.info(
            "cycle considered=%s placed=%s waiting=%s place_ms=%.1f publish_ms=%.1f",
            result.considered,
            result.placed,
            result.waiting,
            (placed - started) * 1000,
            (time.perf_counter() - placed) * 1000,
        )
    return result


@dataclass(frozen=True)
class _Pending:
    job: PendingJob
    attempts: int
    pending_reason: str


def _json(value):
    """A jsonb column read with a plain cursor: Django has psycopg hand jsonb over as text."""
    return json.loads(value) if isinstance(value, str) else value


def _lock_pending_jobs(
    *, now, per_queue: int, reasons: Sequence[str] | None
) -> tuple[list[_Pending], dict[int, QueueState]]:
    """The pending jobs (see PENDING_JOBS_SQL), and their queues as the planner sees them."""
    with prepared_cursor() as cursor:
        cursor.execute(
            PENDING_JOBS_SQL,
            {
                "pending": JobStatus.PENDING,
                "now": now,
                "per_queue": per_queue,
                "reasons": list(reasons) if reasons is not None else None,
                "live": list(LIVE_ALLOCATION_STATUSES),
            },
        )
        rows = cursor.fetchall()
    pending, queues = [], {}
    for row in rows:
        job_id, queue_id, cpu, memory, gpu, selector, attempts, reason, *queue = row
        request = Request(cpu, memory, gpu, _json(selector) or {})
        pending.append(_Pending(PendingJob(job_id, queue_id, request), attempts, reason))
        if queue_id not in queues:
            name, weight, priority, strategy, quota_cpu, quota_memory, quota_gpu, *used = queue
            queues[queue_id] = QueueState(
                id=queue_id,
                name=name,
                weight=weight,
                priority=priority,
                strategy=Strategy(strategy),
                quota_cpu_millis=quota_cpu,
                quota_memory_mb=quota_memory,
                quota_gpu=quota_gpu,
                allocated=Resources(*used),
            )
    return pending, queues


def _node_slot(node: Node) -> NodeSlot:
    return NodeSlot(
        id=node.id,
        name=node.name,
        cpu_millis=node.cpu_millis,
        memory_mb=node.memory_mb,
        gpu=node.gpu,
        free_cpu_millis=node.free_cpu_millis,
        free_memory_mb=node.free_memory_mb,
        free_gpu=node.free_gpu,
        labels=node.labels,
    )


@transaction.atomic
def place_pending_jobs(*, batch_size: int) -> CycleResult:
    """Place due jobs, up to `batch_size` of each queue; commit once."""
    now = timezone.now()
    # Nodes first, then jobs. Jobs are taken with SKIP LOCKED, so the cycle never waits
    # for a job lock while it holds the nodes, and a cancel holding a job never waits for
    # a cycle that waits for it. Every node that is not offline counts towards the
    # cluster the shares are of; only ready ones take work. Two overlapping cycles (a
    # leader that lost its lock mid-cycle) queue up here.
    #
    # Every job needs some CPU: with none free on a ready node, a cycle places nothing
    # and only tells new arrivals why they wait. It finds that out with a look first,
    # without locks, and then takes none, so it does not hold up the finishes that free
    # room (each writes its node's row). Room freed meanwhile is not missed: a finish
    # that leaves room wakes the scheduler for another cycle.
    room = Node.objects.filter(
        status=NodeStatus.READY, allocated_cpu_millis__lt=F("cpu_millis")
    ).exists()
    nodes = Node.objects.exclude(status=NodeStatus.OFFLINE).order_by("id")
    nodes = list(nodes.select_for_update() if room else nodes)
    slots = {n.id: _node_slot(n) for n in nodes if n.status == NodeStatus.READY}
    free_cpu = sum(slot.free_cpu_millis for slot in slots.values())
    arrivals_only = not room or free_cpu == 0
    per_queue_limit = jobs_per_queue(free_cpu_millis=free_cpu, batch_size=batch_size)
    pending, queues = _lock_pending_jobs(
        now=now, per_queue=per_queue_limit, reasons=[PendingReason.NONE] if arrivals_only else None
    )
    capacity = Resources(
        sum(n.cpu_millis for n in nodes), sum(n.memory_mb for n in nodes), sum(n.gpu for n in nodes)
    )
    result, plan, _ = _place(pending, queues, slots.values(), capacity, now, window=per_queue_limit)
    if arrivals_only:
        result.batch_full, result.full = False, True
    by_job = {p.job.id: p for p in pending}
    changed: dict[str, list[int]] = {}
    for job_id, reason in plan.waiting.items():
        result.waiting[reason.value] = result.waiting.get(reason.value, 0) + 1
        if by_job[job_id].pending_reason != reason.value:
            changed.setdefault(reason.value, []).append(job_id)
    if changed:
        Job.objects.filter(id__in=[i for ids in changed.values() for i in ids]).update(
            pending_reason=Case(
                *[When(id__in=ids, then=Value(reason)) for reason, ids in changed.items()]
            )
        )
    return result


def _place(
    pending: list[_Pending],
    queues: dict[int, QueueState],
    slots: Iterable[NodeSlot],
    capacity: Resources,
    now,
    *,
    window: int,
    claim: int = 0,
    before_claim: Callable[[list[str]], None] | None = None,
) -> tuple[CycleResult, Plan, list[JobExecution]]:
    """Plan the locked pending jobs onto the locked nodes and write the placements; the
    first `claim` are claimed (see `_write_placements`), and come back as executions."""
    result = CycleResult(considered=len(pending))
    if not pending:
        return result, Plan(), []
    per_queue = Counter(p.job.queue_id for p in pending)
    result.batch_full = max(per_queue.values()) >= window
    plan = plan_placements(
        jobs=[p.job for p in pending], queues=queues, nodes=slots, capacity=capacity
    )
    claimed = []
    if plan.placements:
        tokens, claimed = _write_placements(
            plan.placements,
            {p.job.id: p for p in pending},
            now,
            claim=claim,
            before_claim=before_claim,
        )
        result.placements = [
            (token, slot.name) for token, (_, slot) in zip(tokens, plan.placements, strict=True)
        ]
    return result, plan, claimed


# --- A node's finish hands its room on ------------------------------------------------

# When executions end on a node, the finish that released their allocations places the
# jobs waiting for room on that node, in the same transaction, by the cycle's rules
# (queues by fair share and quota, jobs by priority then age), so a freed slot does not
# wait for a scheduler round trip. Hand-ons serialize on this transaction-level advisory
# lock, so two nodes' finishes never both read a queue's usage and both place up to its
# quota; a finish that finds it taken leaves its room to the scheduler. The scheduling
# cycle needs no part in it: it locks every node first, this node included, so it waits
# for the finish to commit before it reads anything.
HAND_ON_LOCK_ID = 0x5C4EE
# Jobs read per queue for one node's freed room, which is usually a job's worth.
HAND_ON_JOBS_PER_QUEUE = 16
# What a hand-on may place: jobs a cycle has seen and left waiting for room, or for a
# retry time that has passed. New arrivals stay the scheduler's, which weighs every
# node for them by the queue's strategy.
HAND_ON_REASONS = (
    PendingReason.INSUFFICIENT_CAPACITY,
    PendingReason.QUEUE_QUOTA,
    PendingReason.WAITING_RETRY,
)
NODE_FOR_HAND_ON_SQL = """
SELECT pg_try_advisory_xact_lock(%(lock)s), n.status, n.name, n.cpu_millis, n.memory_mb,
       n.gpu, n.allocated_cpu_millis, n.allocated_memory_mb, n.allocated_gpu, n.labels,
       cluster.cpu_millis, cluster.memory_mb, cluster.gpu
FROM nodes_node n,
     (SELECT sum(cpu_millis), sum(memory_mb), sum(gpu) FROM nodes_node
       WHERE status <> %(offline)s) AS cluster(cpu_millis, memory_mb, gpu)
WHERE n.id = %(node)s
FOR UPDATE OF n
"""


@dataclass(frozen=True)
class HandOn:
    claimed: list[JobExecution]  # placed and claimed for the node, to run at once
    placements: list[tuple[str, str]]  # (token, node name): placed, to be sent
    # Room the waiting jobs did not take (too small for them, or more jobs wait than
    # were read): the scheduler's, which sees new arrivals and every queue's backlog.
    room_left: bool


def place_waiting_jobs_on_node(
    *, node_id: int, claim: int = 0, before_claim: Callable[[list[str]], None] | None = None
) -> HandOn | None:
    """Place waiting jobs on the room a finish has just freed on the node, inside the
    finish's transaction (which holds the node's row). None when it did not look, and
    the room is the scheduler's: the node is not ready, or another hand-on is under way.

    Up to `claim` of them are claimed for the node in the same statement, for the agent
    threads whose successes freed the room: they run them without a claim of their own.
    Their tokens go to `before_claim` first, so the agent lists them in its heartbeats
    before they are running, as it does with the tokens it claims itself."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("place_waiting_jobs_on_node must run inside the finish's transaction")
    now = timezone.now()
    with prepared_cursor() as cursor:
        cursor.execute(
            NODE_FOR_HAND_ON_SQL,
            {"lock": HAND_ON_LOCK_ID, "node": node_id, "offline": NodeStatus.OFFLINE},
        )
        row = cursor.fetchone()
    if row is None:
        return None
    locked, status, name, cpu, memory, gpu, used_cpu, used_memory, used_gpu, labels = row[:10]
    if not locked or status != NodeStatus.READY:
        return None
    slot = _node_slot(
        Node(
            id=node_id,
            name=name,
            cpu_millis=cpu,
            memory_mb=memory,
            gpu=gpu,
            allocated_cpu_millis=used_cpu,
            allocated_memory_mb=used_memory,
            allocated_gpu=used_gpu,
            labels=_json(labels),
        )
    )
    pending, queues = _lock_pending_jobs(
        now=now, per_queue=HAND_ON_JOBS_PER_QUEUE, reasons=HAND_ON_REASONS
    )
    result, _, claimed = _place(
        pending,
        queues,
        [slot],
        Resources(*row[10:]),
        now,
        window=HAND_ON_JOBS_PER_QUEUE,
        claim=claim,
        before_claim=before_claim,
    )
    return HandOn(
        claimed,
        result.placements[len(claimed) :],
        slot.free_cpu_millis > 0 and slot.free_memory_mb > 0,
    )


# The writes of a placement, in one statement whatever the number of placements:
# executions, their allocations, the jobs' statuses and the node counters. Plain SQL
# over arrays rather than bulk_create: for thousands of rows, building model instances
# and compiling their values costs more than the statement itself. Only jobs the caller
# locked are here, so their status is still pending; the nodes are locked too, and the
# CHECK constraints refuse any counter beyond capacity. A column added to these tables
# needs a value here (or a database default); the cycle tests fail until it has one.
# A placement marked `claimed` is claimed for its node at once (running, as
# `execution_claim` leaves it), and what the node needs to run it comes back.
WRITE_PLACEMENTS_SQL = """
WITH placed AS (
    SELECT * FROM unnest(%(job_ids)s::bigint[], %(attempts)s::integer[],
                         %(node_ids)s::bigint[], %(tokens)s::text[], %(cpu)s::integer[],
                         %(memory)s::integer[], %(gpu)s::integer[], %(claimed)s::boolean[])
        AS p(job_id, attempt, node_id, token, cpu_millis, memory_mb, gpu, claimed)
), execution AS (
    INSERT INTO jobs_jobexecution
        (job_id, attempt, node_id, token, status, reserved_at, started_at, error, log_path,
         log_tail)
    SELECT job_id, attempt, node_id, token, CASE WHEN claimed THEN 'running' ELSE 'reserved' END,
           %(now)s, CASE WHEN claimed THEN %(now)s END, '', '', ''
      FROM placed
    RETURNING id, job_id
), allocation AS (
    INSERT INTO resources_allocation
        (execution_id, node_id, cpu_millis, memory_mb, gpu, status, created_at, activated_at)
    SELECT execution.id, node_id, cpu_millis, memory_mb, gpu,
           CASE WHEN claimed THEN 'active' ELSE 'reserved' END, %(now)s,
           CASE WHEN claimed THEN %(now)s END
      FROM placed JOIN execution USING (job_id)
), job AS (
    UPDATE jobs_job AS job
       SET status = CASE WHEN placed.claimed THEN 'running' ELSE 'reserved' END,
           started_at = CASE WHEN placed.claimed THEN %(now)s ELSE job.started_at END,
           pending_reason = '', attempts = placed.attempt, last_execution_id = execution.id
      FROM placed JOIN execution USING (job_id)
     WHERE job.id = placed.job_id
    RETURNING job.id, execution.id AS execution_id, placed.attempt, placed.token,
              placed.node_id, placed.claimed
), node AS (
    UPDATE nodes_node AS node
       SET allocated_cpu_millis = node.allocated_cpu_millis + added.cpu_millis,
           allocated_memory_mb = node.allocated_memory_mb + added.memory_mb,
           allocated_gpu = node.allocated_gpu + added.gpu
      FROM (SELECT node_id, sum(cpu_millis) AS cpu_millis, sum(memory_mb) AS memory_mb,
                   sum(gpu) AS gpu
              FROM placed GROUP BY node_id) AS added
     WHERE node.id = added.node_id
)
SELECT job.execution_id, job.id, job.attempt, job.token, job.node_id, j.kind, j.command,
       j.callable, j.env, j.parameters, j.cpu_millis, j.memory_mb, j.gpu, j.timeout_seconds
  FROM job JOIN jobs_job j ON j.id = job.id
 WHERE job.claimed
"""
# Up to this many placements are written through a prepared statement. A plan made for
# a handful of rows (a node's hand-on) would be the wrong one for the thousands of a
# scheduling cycle after a burst, so those are planned afresh for their size.
PREPARED_PLACEMENTS_MAX = 64


def _write_placements(
    placements, by_job, now, *, claim: int = 0, before_claim=None
) -> tuple[list[str], list[JobExecution]]:
    """Executions, allocations, job statuses and node counters; returns the tokens, and
    the executions of the first `claim` placements, claimed for their node. Those tokens
    go to `before_claim` before anything is written."""
    job_ids = [job.id for job, _ in placements]
    attempts = [by_job[job.id].attempts + 1 for job, _ in placements]
    tokens = [execution_token(j, a) for j, a in zip(job_ids, attempts, strict=True)]
    claimed = [i < claim for i in range(len(placements))]
    if claim and before_claim is not None:
        before_claim(tokens[:claim])
        now = timezone.now()  # claimed after `before_claim` ran, as a claim would be
    small = len(placements) <= PREPARED_PLACEMENTS_MAX
    with prepared_cursor() if small else connection.cursor() as cursor:
        cursor.execute(
            WRITE_PLACEMENTS_SQL,
            {
                "now": now,
                "job_ids": job_ids,
                "attempts": attempts,
                "node_ids": [slot.id for _, slot in placements],
                "tokens": tokens,
                "cpu": [job.request.cpu_millis for job, _ in placements],
                "memory": [job.request.memory_mb for job, _ in placements],
                "gpu": [job.request.gpu for job, _ in placements],
                "claimed": claimed,
            },
        )
        by_token = {row[3]: claimed_execution(row, now=now) for row in cursor.fetchall()}
    return tokens, [by_token[token] for token in tokens[:claim]]
