"""The scheduling cycle: place pending jobs on ready nodes, in one transaction.

Snapshot: lock the nodes, then each team's next due pending jobs in each queue (SKIP
LOCKED), as many as the free room could take; read the queues and what their jobs, and
each team's, hold now. Plan in memory with `resources.placement`: queues by fair share,
jobs by priority, then their teams' weighted fair share within the queue, then age,
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
from fractions import Fraction

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from common.db import prepared_cursor, sql_literal, sql_literals
from nodes.models import Node, NodeStatus
from nodes.services import node_drain_complete
from resources.models import LIVE_ALLOCATION_STATUSES
from resources.placement import (
    NodeSlot,
    PendingJob,
    Plan,
    QueueState,
    Request,
    Reservation,
    Resources,
    Strategy,
    Unplaced,
    fits_now,
    plan_placements,
)
from resources.routing import routes_known

from ..accounting import ClaimedExecution, Placement, placements_write
from ..models import (
    HELD_REASONS,
    JobStatus,
    PendingReason,
    execution_token,
)
from ..services.publishing import executions_publish_on_commit
from .concurrency import concurrency_slots_lock
from .preemption import hold_take, preempt_for_waiting_jobs, preemption_holds
from .reservations import reservation_write, running_releases

logger = logging.getLogger(__name__)

# Each team's next `per_queue` pending jobs in each queue that are due (and whose
# deadline has not passed: the deadline check cancels those), in their order (priority,
# then deadline, then age), locked so that a second scheduler (or a cancel) skips them
# rather than waiting. Per queue and team, so that a long backlog in one queue cannot
# hide another queue's jobs from the fair-share order, nor one team's backlog another
# team's jobs in the same queue. The (queue, team) pairs with pending jobs are found by
# skipping through the job_pending_by_queue_team index (one probe a pair, however many
# jobs each has), which then serves each pair's jobs. With `reasons`, only jobs waiting
# for one of them ('' for the jobs no cycle has looked at yet). Each row also carries
# its queue's rules, its team's fair share weight and past share, what the queue's jobs
# hold now and what its team's jobs in the queue hold, read after the node locks, so a
# cycle that ran just before (a leader that lost its lock mid-cycle) is seen once it
# has committed. That usage is summed over the live allocations only, by the queue
# each was placed from and its team, with no join (allocation_live_by_queue_team
# serves it), for every queue at once. The statement is prepared: the statuses and
# held reasons are written into it, not bound, so that its generic plan can see it
# matches the partial indexes' conditions.
_PENDING = f"""status = {sql_literal(JobStatus.PENDING)}
      AND pending_reason NOT IN ({sql_literals(HELD_REASONS)})"""
PENDING_JOBS_SQL = f"""
WITH RECURSIVE pairs AS (
    (SELECT queue_id, team_id FROM jobs_job
      WHERE {_PENDING}
      ORDER BY queue_id, team_id LIMIT 1)
    UNION ALL
    SELECT next.queue_id, next.team_id
      FROM pairs p CROSS JOIN LATERAL (
          SELECT queue_id, team_id FROM jobs_job
           WHERE {_PENDING}
             AND (queue_id, team_id) > (p.queue_id, p.team_id)
           ORDER BY queue_id, team_id LIMIT 1
      ) next
), usage AS (
    SELECT queue_id, team_id, sum(cpu_millis) AS cpu_millis,
           sum(memory_mb) AS memory_mb, sum(gpu) AS gpu
      FROM resources_allocation
     WHERE status IN ({sql_literals(LIVE_ALLOCATION_STATUSES)})
     GROUP BY queue_id, team_id
), queue_usage AS (
    SELECT queue_id, sum(cpu_millis)::bigint AS cpu_millis,
           sum(memory_mb)::bigint AS memory_mb, sum(gpu)::bigint AS gpu
      FROM usage GROUP BY queue_id
)
SELECT j.id, j.queue_id, j.cpu_millis, j.memory_mb, j.gpu, j.node_selector, j.attempts,
       j.pending_reason, j.team_id, j.concurrency_key, j.timeout_seconds,
       j.reservation_node_id, j.reservation_start_at, j.reservation_nodes, j.tasks,
       j.priority, coalesce(tu.cpu_millis, 0), coalesce(tu.memory_mb, 0),
       coalesce(tu.gpu, 0), tm.fair_share_weight, tm.past_share, q.name, q.weight, q.priority,
       q.strategy, q.quota_cpu_millis, q.quota_memory_mb, q.quota_gpu, q.past_share,
       coalesce(qu.cpu_millis, 0), coalesce(qu.memory_mb, 0), coalesce(qu.gpu, 0)
FROM pairs
JOIN resources_queue q ON q.id = pairs.queue_id
JOIN accounts_team tm ON tm.id = pairs.team_id
CROSS JOIN LATERAL (
    SELECT id, queue_id, cpu_millis, memory_mb, gpu, node_selector, attempts, pending_reason,
           team_id, concurrency_key, timeout_seconds, reservation_node_id,
           reservation_start_at, reservation_nodes, tasks, priority, deadline, created_at
    FROM jobs_job
    WHERE queue_id = pairs.queue_id AND team_id = pairs.team_id
      AND {_PENDING}
      AND (not_before IS NULL OR not_before <= %(now)s)
      AND (deadline IS NULL OR deadline > %(now)s)
      AND (%(reasons)s::text[] IS NULL OR pending_reason = ANY(%(reasons)s::text[]))
    ORDER BY priority DESC, deadline ASC NULLS LAST, created_at, id
    LIMIT %(per_queue)s
    FOR UPDATE SKIP LOCKED
) j
LEFT JOIN usage tu ON tu.queue_id = q.id AND tu.team_id = j.team_id
LEFT JOIN queue_usage qu ON qu.queue_id = q.id
ORDER BY q.id, j.priority DESC, j.deadline ASC NULLS LAST, j.created_at, j.id
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


# Each waiting job's new pending reason, in one statement whatever their number.
REASONS_WRITE_SQL = """
UPDATE jobs_job j SET pending_reason = w.reason
  FROM unnest(%(ids)s::bigint[], %(reasons)s::text[]) AS w(id, reason)
 WHERE j.id = w.id
"""


@dataclass
class CycleResult:
    considered: int = 0
    placements: list[tuple[str, str]] = field(default_factory=list)  # (token, node name)
    waiting: dict[str, int] = field(default_factory=dict)  # reason -> jobs
    batch_full: bool = False  # some team may have more due jobs in a queue than were read
    full: bool = False  # no ready node had CPU free: only new arrivals were read
    preempted: int = 0  # executions asked to stop for waiting jobs

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
    result.preempted = len(preempt_for_waiting_jobs().victims)
    placed = time.perf_counter()
    # The router would look each token's node up in the database; this cycle has just
    # committed those allocations, so it tells the router instead.
    with routes_known(dict(result.placements)):
        executions_publish_on_commit(tokens=result.tokens)
    if result.placed or result.waiting or result.preempted:
        logger.info(
            "cycle considered=%s placed=%s waiting=%s preempting=%s place_ms=%.1f publish_ms=%.1f",
            result.considered,
            result.placed,
            result.waiting,
            result.preempted,
            (placed - started) * 1000,
            (time.perf_counter() - placed) * 1000,
        )
    return result


@dataclass(frozen=True)
class _Pending:
    job: PendingJob
    attempts: int
    pending_reason: str
    reservation: tuple  # (pending reason, node id, start, node ids): what the job holds now


def json_value(value):
    """A jsonb column read with a plain cursor: Django has psycopg hand jsonb over as text."""
    return json.loads(value) if isinstance(value, str) else value


def lock_pending_jobs(
    *, now, per_queue: int, reasons: Sequence[str] | None
) -> tuple[list[_Pending], dict[int, QueueState]]:
    """The pending jobs (see PENDING_JOBS_SQL), and their queues as the planner sees them."""
    with prepared_cursor() as cursor:
        cursor.execute(
            PENDING_JOBS_SQL,
            {
                "now": now,
                "per_queue": per_queue,
                "reasons": list(reasons) if reasons is not None else None,
            },
        )
        rows = cursor.fetchall()
    pending, queues = [], {}
    for row in rows:
        job_id, queue_id, cpu, memory, gpu, selector, attempts, reason, team_id, key = row[:10]
        timeout, reservation_node, reservation_start, reservation_nodes, tasks = row[10:15]
        job_priority, team_cpu, team_memory, team_gpu, team_weight, team_past, *queue = row[15:]
        request = Request(cpu, memory, gpu, json_value(selector) or {})
        limit_key = (team_id, key) if key else None
        job = PendingJob(
            job_id, queue_id, request, limit_key, timeout, tasks, team_id, job_priority
        )
        pending.append(
            _Pending(
                job,
                attempts,
                reason,
                (reason, reservation_node, reservation_start, json_value(reservation_nodes)),
            )
        )
        if queue_id not in queues:
            name, weight, priority, strategy, quota_cpu, quota_memory, quota_gpu, past, *used = (
                queue
            )
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
                past_share=Fraction(past),
            )
        queues[queue_id].team_allocated.setdefault(
            team_id, Resources(team_cpu, team_memory, team_gpu)
        )
        queues[queue_id].team_weights[team_id] = team_weight
        if team_past:
            queues[queue_id].team_past_shares[team_id] = Fraction(team_past)
    return pending, queues


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
    slots = {n.id: NodeSlot.of(n) for n in nodes if n.status == NodeStatus.READY}
    free_cpu = sum(slot.free_cpu_millis for slot in slots.values())
    arrivals_only = not room or free_cpu == 0
    per_queue_limit = jobs_per_queue(free_cpu_millis=free_cpu, batch_size=batch_size)
    pending, queues = lock_pending_jobs(
        now=now, per_queue=per_queue_limit, reasons=[PendingReason.NONE] if arrivals_only else None
    )
    # What it writes (the executions' times, the placed events) is stamped after the
    # jobs were read: one submitted while the cycle waited for the node locks was
    # created after the cycle began, and its placement must not come before its
    # submission.
    now = timezone.now()
    capacity = Resources(
        sum(n.cpu_millis for n in nodes), sum(n.memory_mb for n in nodes), sum(n.gpu for n in nodes)
    )
    # A cycle that holds no node locks reserves nothing: the room it would reserve on
    # may be changing under it. Placement on freed room reserves in such times.
    result, plan, _ = place(
        pending,
        queues,
        slots.values(),
        capacity,
        now,
        window=per_queue_limit,
        reserve=not arrivals_only,
    )
    if arrivals_only:
        result.batch_full, result.full = False, True
    for reason in plan.waiting.values():
        result.waiting[reason.value] = result.waiting.get(reason.value, 0) + 1
    waiting_write(plan, pending)
    return result


def waiting_write(
    plan: Plan,
    pending: list[_Pending],
    *,
    only: Iterable[str] | None = None,
    reservation: bool = True,
):
    """Record why the plan's waiting jobs wait, where it changed (only for the reasons in
    `only`, if given), and (unless `reservation` is false) its reservation."""
    by_job = {p.job.id: p for p in pending}
    only = None if only is None else set(only)
    changed: dict[int, str] = {}
    for job_id, reason in plan.waiting.items():
        if only is not None and reason.value not in only:
            continue
        if by_job[job_id].pending_reason != reason.value and reason is not Unplaced.RESERVATION:
            changed[job_id] = reason.value
    if changed:
        # The jobs are locked by this transaction and still pending.
        with connection.cursor() as cursor:
            cursor.execute(
                REASONS_WRITE_SQL, {"ids": list(changed), "reasons": list(changed.values())}
            )
    if not reservation:
        return
    reservation_write(
        plan=plan,
        held={p.job.id: p.reservation for p in pending},
        team_ids={p.job.id: p.job.team_id for p in pending},
    )


def place(
    pending: list[_Pending],
    queues: dict[int, QueueState],
    slots: Iterable[NodeSlot],
    capacity: Resources,
    now,
    *,
    window: int,
    reserve: bool = False,
    claim: int = 0,
    before_claim: Callable[[list[str]], None] | None = None,
    reservation: Reservation | None = None,
) -> tuple[CycleResult, Plan, list[ClaimedExecution]]:
    """Plan the locked pending jobs onto the locked nodes and write the placements; the
    first `claim` are claimed (see `_write_placements`), and come back as executions.
    With `reserve`, the first job that finds no room gets a reservation on one of the
    nodes (see `resources.placement.Reservation`); a `reservation` given is honoured."""
    result = CycleResult(considered=len(pending))
    if not pending:
        return result, Plan(), []
    per_window = Counter((p.job.queue_id, p.job.team_id) for p in pending)
    result.batch_full = max(per_window.values()) >= window
    slots = list(slots)
    planned, first = place_on_held_room(pending, queues, slots)
    plan = plan_placements(
        jobs=[p.job for p in planned],
        queues=queues,
        nodes=slots,
        capacity=capacity,
        limit_slots=concurrency_slots_lock({p.job.limit_key for p in planned} - {None}),
        releases=(lambda: running_releases(node_ids=[s.id for s in slots], now=now))
        if reserve
        else None,
        now=now.timestamp(),
        reservation=reservation,
    )
    plan.placements[:0] = first
    claimed = []
    if plan.placements:
        tokens, claimed = write_placements(
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


def place_on_held_room(
    pending: list[_Pending], queues: dict[int, QueueState], slots: list[NodeSlot]
) -> tuple[list[_Pending], list[tuple[PendingJob, NodeSlot]]]:
    """Keep the room held for preempting jobs (see `jobs.scheduling.preemption`) off the
    nodes, and place those of `pending` whose held room is all free now. Returns the
    jobs left for the planner, and those placements. A preempting job whose victims are
    still stopping waits on (neither planned nor told anything new); one whose victims
    have all ended but whose node cannot take it (not ready any more), or whose queue
    has reached its quota meanwhile, is planned as any (and waits for its quota then)."""
    holds = preemption_holds()
    by_id = {slot.id: slot for slot in slots}
    for hold in holds.values():
        if hold.node_id in by_id:
            hold_take(by_id[hold.node_id], hold.room)
    left, first = [], []
    for p in pending:
        hold = holds.get(p.job.id) if p.pending_reason == PendingReason.PREEMPTING else None
        slot = None if hold is None else by_id.get(hold.node_id)
        if slot is None:
            left.append(p)
            continue
        hold_take(slot, hold.room, -1)
        queue = queues[p.job.queue_id]
        if (
            not hold.victims_live
            and fits_now(slot, p.job.request)
            and queue.within_quota(p.job.total)
        ):
            slot.take(p.job.request)
            queue.take(p.job.team_id, p.job.request)
            first.append((p.job, slot))
        elif hold.victims_live:
            hold_take(slot, hold.room)
        else:
            left.append(p)
    return left, first


def write_placements(
    placements, by_job, now, *, claim: int = 0, before_claim=None
) -> tuple[list[str], list[ClaimedExecution]]:
    """Write the plan's placements (see `jobs.accounting.placements_write`); returns their
    tokens, and the executions of the first `claim`, claimed for their node. Those
    tokens go to `before_claim` before anything is written. A gang's tasks come one
    after another in the plan, and are numbered so."""
    attempts = [by_job[job.id].attempts + 1 for job, _ in placements]
    task_indexes = _task_indexes(placements)
    tokens = [
        execution_token(job.id, a, i)
        for (job, _), a, i in zip(placements, attempts, task_indexes, strict=True)
    ]
    if claim and before_claim is not None:
        before_claim(tokens[:claim])
        now = timezone.now()  # claimed after `before_claim` ran, as a claim would be
    rows = [
        Placement(
            job_id=job.id,
            attempt=attempt,
            node_id=slot.id,
            token=token,
            cpu_millis=job.request.cpu_millis,
            memory_mb=job.request.memory_mb,
            gpu=job.request.gpu,
            claimed=i < claim,
            task_index=task_index,
        )
        for i, ((job, slot), attempt, token, task_index) in enumerate(
            zip(placements, attempts, tokens, task_indexes, strict=True)
        )
    ]
    return tokens, placements_write(rows, now=now)


def _task_indexes(placements) -> list[int]:
    """Each placement's task index: 0 for a single job, 0 to N-1 along a gang's run."""
    indexes, previous = [], None
    for job, _ in placements:
        indexes.append(indexes[-1] + 1 if job is previous else 0)
        previous = job
    return indexes
