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
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.db.models import Case, F, Sum, Value, When
from django.utils import timezone

from jobs.models import ExecutionStatus, Job, JobStatus, execution_token
from jobs.services import execution_publish_many
from nodes.models import Node, NodeStatus
from nodes.services import node_drain_complete

from .models import LIVE_ALLOCATION_STATUSES, Allocation, AllocationStatus, Queue
from .placement import (
    NodeSlot,
    PendingJob,
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
# With `arrivals_only`, only jobs no cycle has looked at yet. Served by the
# job_pending_by_queue index.
PENDING_JOBS_SQL = """
SELECT j.id, j.queue_id, j.cpu_millis, j.memory_mb, j.gpu, j.node_selector, j.attempts,
       j.pending_reason
FROM resources_queue q
CROSS JOIN LATERAL (
    SELECT id, queue_id, cpu_millis, memory_mb, gpu, node_selector, attempts, pending_reason,
           priority, created_at
    FROM jobs_job
    WHERE queue_id = q.id
      AND status = %(pending)s
      AND (not_before IS NULL OR not_before <= %(now)s)
      AND (NOT %(arrivals_only)s OR pending_reason = '')
    ORDER BY priority DESC, created_at, id
    LIMIT %(per_queue)s
    FOR UPDATE SKIP LOCKED
) j
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


def _lock_pending_jobs(*, now, per_queue: int, arrivals_only: bool) -> list[_Pending]:
    with connection.cursor() as cursor:
        cursor.execute(
            PENDING_JOBS_SQL,
            {
                "pending": JobStatus.PENDING,
                "now": now,
                "per_queue": per_queue,
                "arrivals_only": arrivals_only,
            },
        )
        rows = cursor.fetchall()
    pending = []
    for job_id, queue_id, cpu, memory, gpu, selector, attempts, reason in rows:
        if isinstance(selector, str):  # Django has psycopg hand jsonb over as text
            selector = json.loads(selector)
        request = Request(cpu, memory, gpu, selector or {})
        pending.append(_Pending(PendingJob(job_id, queue_id, request), attempts, reason))
    return pending


def _queue_states(queue_ids: set[int]) -> dict[int, QueueState]:
    return {
        queue.id: QueueState(
            id=queue.id,
            name=queue.name,
            weight=queue.weight,
            priority=queue.priority,
            strategy=Strategy(queue.strategy),
            quota_cpu_millis=queue.quota_cpu_millis,
            quota_memory_mb=queue.quota_memory_mb,
            quota_gpu=queue.quota_gpu,
        )
        for queue in Queue.objects.filter(id__in=queue_ids)
    }


def _queue_usage(queues: dict[int, QueueState]) -> None:
    """What each queue's jobs hold now. Read after the node locks, so a cycle that ran
    just before (a leader that lost its lock mid-cycle) is seen once it has committed."""
    # Filtered on the live allocations only (their partial index), not on the queues:
    # a filter on the jobs' queue lets the planner start from every job of the queue.
    usage = (
        Allocation.objects.filter(status__in=LIVE_ALLOCATION_STATUSES)
        .values(queue=F("execution__job__queue_id"))
        .annotate(cpu=Sum("cpu_millis"), memory=Sum("memory_mb"), gpu=Sum("gpu"))
        .order_by()
    )
    for row in usage:
        if row["queue"] in queues:
            queues[row["queue"]].allocated = Resources(row["cpu"], row["memory"], row["gpu"])


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
    nodes = list(Node.objects.select_for_update().exclude(status=NodeStatus.OFFLINE).order_by("id"))
    slots = {n.id: _node_slot(n) for n in nodes if n.status == NodeStatus.READY}
    free_cpu = sum(slot.free_cpu_millis for slot in slots.values())
    # Every job needs some CPU: with none free, only tell new arrivals why they wait.
    arrivals_only = free_cpu == 0
    per_queue_limit = jobs_per_queue(free_cpu_millis=free_cpu, batch_size=batch_size)
    pending = _lock_pending_jobs(now=now, per_queue=per_queue_limit, arrivals_only=arrivals_only)
    result = CycleResult(considered=len(pending))
    if not pending:
        return result
    per_queue = Counter(p.job.queue_id for p in pending)
    result.batch_full = not arrivals_only and max(per_queue.values()) >= per_queue_limit
    queues = _queue_states(set(per_queue))
    capacity = Resources(
        sum(n.cpu_millis for n in nodes), sum(n.memory_mb for n in nodes), sum(n.gpu for n in nodes)
    )
    _queue_usage(queues)
    plan = plan_placements(
        jobs=[p.job for p in pending], queues=queues, nodes=slots.values(), capacity=capacity
    )

    by_job = {p.job.id: p for p in pending}
    if plan.placements:
        tokens = _write_placements(plan.placements, by_job, now)
        result.placements = [
            (token, slot.name) for token, (_, slot) in zip(tokens, plan.placements, strict=True)
        ]
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


# The writes of a cycle, one statement each whatever the number of placements. Plain SQL
# over arrays rather than bulk_create: for thousands of rows, building model instances
# and compiling their values costs more than the statements themselves. A column added
# to these tables needs a value here (or a database default); the cycle tests fail until
# it has one.
INSERT_EXECUTIONS_SQL = """
INSERT INTO jobs_jobexecution
    (job_id, attempt, node_id, token, status, reserved_at, error, log_path, log_tail)
SELECT job_id, attempt, node_id, token, %(status)s, %(now)s, '', '', ''
FROM unnest(%(job_ids)s::bigint[], %(attempts)s::integer[], %(node_ids)s::bigint[],
            %(tokens)s::text[]) AS placed(job_id, attempt, node_id, token)
RETURNING job_id, id
"""
INSERT_ALLOCATIONS_SQL = """
INSERT INTO resources_allocation
    (execution_id, node_id, cpu_millis, memory_mb, gpu, status, created_at)
SELECT execution_id, node_id, cpu_millis, memory_mb, gpu, %(status)s, %(now)s
FROM unnest(%(execution_ids)s::bigint[], %(node_ids)s::bigint[], %(cpu)s::integer[],
            %(memory)s::integer[], %(gpu)s::integer[])
    AS placed(execution_id, node_id, cpu_millis, memory_mb, gpu)
"""
# Only jobs this cycle locked are here, so their status is still pending.
UPDATE_PLACED_JOBS_SQL = """
UPDATE jobs_job AS job
SET status = %(status)s, pending_reason = '', attempts = placed.attempt,
    last_execution_id = placed.execution_id
FROM unnest(%(job_ids)s::bigint[], %(attempts)s::integer[], %(execution_ids)s::bigint[])
    AS placed(job_id, attempt, execution_id)
WHERE job.id = placed.job_id
"""
# The nodes are locked; the CHECK constraints refuse any sum beyond capacity.
ADD_TO_NODE_COUNTERS_SQL = """
UPDATE nodes_node AS node
SET allocated_cpu_millis = node.allocated_cpu_millis + added.cpu_millis,
    allocated_memory_mb = node.allocated_memory_mb + added.memory_mb,
    allocated_gpu = node.allocated_gpu + added.gpu
FROM unnest(%(node_ids)s::bigint[], %(cpu)s::integer[], %(memory)s::integer[],
            %(gpu)s::integer[]) AS added(node_id, cpu_millis, memory_mb, gpu)
WHERE node.id = added.node_id
"""


def _write_placements(placements, by_job, now) -> list[str]:
    """Executions, allocations, job statuses and node counters; returns the tokens."""
    job_ids = [job.id for job, _ in placements]
    attempts = [by_job[job.id].attempts + 1 for job, _ in placements]
    node_ids = [slot.id for _, slot in placements]
    tokens = [execution_token(j, a) for j, a in zip(job_ids, attempts, strict=True)]
    added: dict[int, list[int]] = {}
    for job, slot in placements:
        total = added.setdefault(slot.id, [0, 0, 0])
        total[0] += job.request.cpu_millis
        total[1] += job.request.memory_mb
        total[2] += job.request.gpu
    with connection.cursor() as cursor:
        cursor.execute(
            INSERT_EXECUTIONS_SQL,
            {
                "status": ExecutionStatus.RESERVED,
                "now": now,
                "job_ids": job_ids,
                "attempts": attempts,
                "node_ids": node_ids,
                "tokens": tokens,
            },
        )
        execution_of = dict(cursor.fetchall())
        execution_ids = [execution_of[job_id] for job_id in job_ids]
        cursor.execute(
            INSERT_ALLOCATIONS_SQL,
            {
                "status": AllocationStatus.RESERVED,
                "now": now,
                "execution_ids": execution_ids,
                "node_ids": node_ids,
                "cpu": [job.request.cpu_millis for job, _ in placements],
                "memory": [job.request.memory_mb for job, _ in placements],
                "gpu": [job.request.gpu for job, _ in placements],
            },
        )
        cursor.execute(
            UPDATE_PLACED_JOBS_SQL,
            {
                "status": JobStatus.RESERVED,
                "job_ids": job_ids,
                "attempts": attempts,
                "execution_ids": execution_ids,
            },
        )
        cursor.execute(
            ADD_TO_NODE_COUNTERS_SQL,
            {
                "node_ids": list(added),
                "cpu": [t[0] for t in added.values()],
                "memory": [t[1] for t in added.values()],
                "gpu": [t[2] for t in added.values()],
            },
        )
    return tokens
