"""A node's freed room: when executions end on a node, the finish that released their
allocations places the jobs waiting for room on that node, in the same transaction, by
the scheduling cycle's rules (queues by fair share and quota, jobs by priority, then
their teams' fair share within the queue, then age), so a freed slot does not wait for
a scheduler round trip.

The node agent reports its successes in batches (`successes_report`, behind `POST
/api/agent/successes/`); the jobs claimed there run on the agent threads whose successes
freed the room.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from common.db import prepared_cursor, sql_literal, sql_literals
from common.wakeup import wake_after_commit
from nodes.models import Node, NodeStatus
from resources.placement import (
    NodeSlot,
    PendingJob,
    Request,
    Reservation,
    Resources,
    reservation_on,
)
from resources.routing import routes_known

from ..accounting import ClaimedExecution, Success
from ..models import ACTIVE_JOB_STATUSES, JobStatus, PendingReason
from ..services.executions import executions_finish_succeeded, job_started_settle
from ..services.publishing import executions_publish_on_commit
from .cycle import json_value, lock_pending_jobs, place, waiting_write
from .reservations import running_releases

logger = logging.getLogger(__name__)

# Placements on freed room serialize on this transaction-level advisory lock, so two
# nodes' finishes never both read a queue's usage and both place up to its quota; a
# finish that finds it taken leaves its room to the scheduler. The scheduling cycle
# needs no part in it: it locks every node first, this node included, so it waits for
# the finish to commit before it reads anything.
FREED_ROOM_LOCK_ID = 0x5C4EE
# Jobs read per queue for one node's freed room, which is usually a job's worth.
FREED_ROOM_JOBS_PER_QUEUE = 16
# What freed room may take: jobs a cycle has seen and left waiting for room, or for a
# retry time that has passed, or for a slot of their concurrency limit (placement locks
# the limits, as the cycle does). New arrivals stay the scheduler's, which weighs every
# node for them by the queue's strategy.
FREED_ROOM_REASONS = (
    PendingReason.INSUFFICIENT_CAPACITY,
    PendingReason.QUEUE_QUOTA,
    PendingReason.WAITING_RETRY,
    PendingReason.CONCURRENCY_LIMIT,
    PendingReason.RESERVATION,
    PendingReason.WOULD_DELAY_RESERVATION,
    PendingReason.PREEMPTING,
)
# What freed room may write of why the jobs it did not place wait: it sees one node, so
# only what it knows from that node alone.
FREED_ROOM_WRITES = (PendingReason.RESERVATION, PendingReason.WOULD_DELAY_RESERVATION)
# Last, whether a job holds a reservation elsewhere (job_reservation_by_node index): then
# this node's room cannot delay it, and freed room reserves nothing itself; whether a
# gang's reservation takes in this node (GANG_RESERVATION_SQL then reads it, to honour
# it here); and whether a gang waits for room (job_gang_waiting index) while no job holds
# a reservation and every job placed has a time limit (job_live_without_limit index):
# then the room is the scheduler's. Only the scheduler, weighing every node, places and
# reserves for gangs, and a cycle that finds every node full reserves nothing: were each
# finish to fill its own room, the jobs behind the gang would take all the room as it
# frees, and no cycle would ever see room to reserve for it. (With a job without a limit
# running, the gang may have no reservation to get, and that would only slow the rest.)
RESERVATION_HOLDERS = f"""
SELECT 1 FROM jobs_job r
 WHERE r.status = {sql_literal(JobStatus.PENDING)}
   AND r.pending_reason = {sql_literal(PendingReason.RESERVATION)}"""
GANGS_WAITING = f"""
SELECT 1 FROM jobs_job g
 WHERE g.status = {sql_literal(JobStatus.PENDING)}
   AND g.pending_reason = {sql_literal(PendingReason.GANG_DOES_NOT_FIT)}"""
LIVE_WITHOUT_LIMIT = f"""
SELECT 1 FROM jobs_job u
 WHERE u.status IN ({sql_literals(ACTIVE_JOB_STATUSES)}) AND u.timeout_seconds IS NULL"""
NODE_WITH_FREED_ROOM_SQL = f"""
SELECT pg_try_advisory_xact_lock(%(lock)s), n.status, n.name, n.cpu_millis, n.memory_mb,
       n.gpu, n.allocated_cpu_millis, n.allocated_memory_mb, n.allocated_gpu, n.labels,
       cluster.cpu_millis, cluster.memory_mb, cluster.gpu,
       EXISTS ({RESERVATION_HOLDERS}
                AND r.reservation_node_id IS DISTINCT FROM n.id
                AND NOT coalesce(r.reservation_nodes, '[]') @> to_jsonb(n.id)),
       EXISTS ({RESERVATION_HOLDERS} AND r.tasks > 1 AND r.reservation_nodes @> to_jsonb(n.id)),
       EXISTS ({GANGS_WAITING}) AND NOT EXISTS ({RESERVATION_HOLDERS})
         AND NOT EXISTS ({LIVE_WITHOUT_LIMIT})
FROM nodes_node n,
     (SELECT sum(cpu_millis), sum(memory_mb), sum(gpu) FROM nodes_node
       WHERE status <> %(offline)s) AS cluster(cpu_millis, memory_mb, gpu)
WHERE n.id = %(node)s
FOR UPDATE OF n
"""


# The gang whose reservation takes in the node: its tasks' request, its time limit, its
# reserved start, and how many of its tasks room is reserved for there.
GANG_RESERVATION_SQL = f"""
SELECT r.id, r.queue_id, r.cpu_millis, r.memory_mb, r.gpu, r.timeout_seconds, r.tasks,
       r.reservation_start_at,
       (SELECT count(*) FROM jsonb_array_elements(r.reservation_nodes) AS task(node)
         WHERE task.node = to_jsonb(%(node)s::bigint))
  FROM jobs_job r
 WHERE r.status = {sql_literal(JobStatus.PENDING)}
   AND r.pending_reason = {sql_literal(PendingReason.RESERVATION)}
   AND r.tasks > 1
   AND r.reservation_nodes @> to_jsonb(%(node)s::bigint)
"""


def gang_reservation_on(slot: NodeSlot, now) -> Reservation | None:
    """The part on this node of the reservation a gang holds there (see
    `resources.placement.reservation_on`), from the running executions' limits; None
    when one of them has none, or the gang has just been cancelled (the node's room is
    then the scheduler's)."""
    with prepared_cursor() as cursor:
        cursor.execute(GANG_RESERVATION_SQL, {"node": slot.id})
        row = cursor.fetchone()
    if row is None:
        return None
    job_id, queue_id, cpu, memory, gpu, timeout, tasks, start, here = row
    releases = running_releases(node_ids=[slot.id], now=now)
    if slot.id not in releases:
        return None
    gang = PendingJob(job_id, queue_id, Request(cpu, memory, gpu), None, timeout, tasks)
    return reservation_on(gang, slot, here, start.timestamp(), releases[slot.id])


@dataclass(frozen=True)
class FreedRoomPlacements:
    claimed: list[ClaimedExecution]  # placed and claimed for the node, to run at once
    placements: list[tuple[str, str]]  # (token, node name): placed, to be sent
    # Room the waiting jobs did not take (too small for them, or more jobs wait than
    # were read): the scheduler's, which sees new arrivals and every queue's backlog.
    room_left: bool


def place_on_freed_room(
    *, node_id: int, claim: int = 0, before_claim: Callable[[list[str]], None] | None = None
) -> FreedRoomPlacements | None:
    """Place waiting jobs on the room a finish has just freed on the node, inside the
    finish's transaction (which holds the node's row). None when it did not look, and
    the room is the scheduler's: the node is not ready, another node's freed room is
    being filled, or a gang waits for a reservation (see NODE_WITH_FREED_ROOM_SQL).

    Up to `claim` of them are claimed for the node in the same statement, for the agent
    threads whose successes freed the room: they run them without a claim of their own.
    Their tokens go to `before_claim` first, so the agent lists them in its heartbeats
    before they are running, as it does with the tokens it claims itself."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("place_on_freed_room must run inside the finish's transaction")
    now = timezone.now()
    with prepared_cursor() as cursor:
        cursor.execute(
            NODE_WITH_FREED_ROOM_SQL,
            {"lock": FREED_ROOM_LOCK_ID, "node": node_id, "offline": NodeStatus.OFFLINE},
        )
        row = cursor.fetchone()
    if row is None:
        return None
    locked, status, name, cpu, memory, gpu, used_cpu, used_memory, used_gpu, labels = row[:10]
    reserved_elsewhere, reserved_for_a_gang, left_for_a_gang = row[13:16]
    if not locked or status != NodeStatus.READY or left_for_a_gang:
        return None
    slot = NodeSlot.of(
        Node(
            id=node_id,
            name=name,
            cpu_millis=cpu,
            memory_mb=memory,
            gpu=gpu,
            allocated_cpu_millis=used_cpu,
            allocated_memory_mb=used_memory,
            allocated_gpu=used_gpu,
            labels=json_value(labels),
        )
    )
    gang_reservation = None
    if reserved_for_a_gang:
        gang_reservation = gang_reservation_on(slot, now)
        if gang_reservation is None:
            return None
    pending, queues = lock_pending_jobs(
        now=now, per_queue=FREED_ROOM_JOBS_PER_QUEUE, reasons=FREED_ROOM_REASONS
    )
    # Gangs are the scheduler's: it weighs every node for their tasks together.
    pending = [p for p in pending if p.job.tasks == 1]
    # A single job's reservation on this node is honoured (the planner makes it again,
    # from this node's running jobs' limits), and so is a gang's part of one here (as the
    # gang's record has it); with none anywhere, the first job the room is too small for
    # gets one here, so a large job is not starved by a stream of small ones.
    result, plan, claimed = place(
        pending,
        queues,
        [slot],
        Resources(*row[10:13]),
        now,
        window=FREED_ROOM_JOBS_PER_QUEUE,
        reserve=not reserved_elsewhere and gang_reservation is None,
        claim=claim,
        before_claim=before_claim,
        reservation=gang_reservation,
    )
    waiting_write(plan, pending, only=FREED_ROOM_WRITES, reservation=gang_reservation is None)
    job_started_settle(executions=claimed, now=now)
    return FreedRoomPlacements(
        claimed,
        result.placements[len(claimed) :],
        slot.free_cpu_millis > 0 and slot.free_memory_mb > 0,
    )


@dataclass(frozen=True)
class SuccessesReported:
    ended: list[str]  # the tokens whose executions these successes ended
    claimed: list[ClaimedExecution]  # placed on the freed room and claimed for the reporter


def successes_report(
    *, node_id: int, successes: list[Success], claim: int, fill_freed_room: bool = True
) -> SuccessesReported:
    """End a node's successes and place waiting jobs on the room they freed, in one
    transaction: up to `claim` of them (no more than successes ended) are claimed for the
    reporting node to run at once; any others are published once it commits. When room
    is left (or the node placed nothing), the scheduler is woken to use it. A batch that
    names another node's execution changes nothing (`ExecutionOfAnotherNode`).

    The node agent reports through `POST /api/agent/successes/`, so this runs on the
    server, within that request: the agent needs no database of its own."""
    placements: list[tuple[str, str]] = []
    with transaction.atomic():
        ended = executions_finish_succeeded(successes, wake=False, node_id=node_id)
        if not ended:
            return SuccessesReported([], [])
        freed = None
        if fill_freed_room:
            freed = place_on_freed_room(node_id=node_id, claim=min(claim, len(ended)))
        # Room left here, or a limit's slot freed, may let the scheduler place jobs
        # elsewhere. Woken once this commits (`wake_after_commit`), not by a NOTIFY in
        # this transaction, which holds the node's row.
        if freed is None or freed.room_left or ended.freed_limit_slots:
            wake_after_commit()
        if freed is not None:
            placements = freed.placements
    claimed = [] if freed is None else freed.claimed
    tokens = [e.token for e in claimed] + [token for token, _ in placements]
    if tokens:
        logger.info(
            "placed on the room freed by %s successes node=%s: %s",
            len(ended),
            node_id,
            " ".join(f"token={token}" for token in tokens),
        )
    if placements:
        with routes_known(dict(placements)):
            executions_publish_on_commit(tokens=[token for token, _ in placements])
    return SuccessesReported(list(ended), claimed)
