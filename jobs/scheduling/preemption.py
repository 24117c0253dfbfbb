"""Preemption in the database: choosing victims for waiting jobs (the rules are
`resources.preemption`'s), recording the choice, and holding the room they free.

The leader's cycle runs `preempt_for_waiting_jobs` after placing. In one transaction it
locks the nodes (as a cycle does, so two schedulers' cycles never plan on the same
room at once), the waiting jobs (SKIP LOCKED) and the victims (SKIP LOCKED: one being
finished is left alone, and so is the preemption that needed it), then marks each victim
`preempt_requested_at`/`preempted_by` only where it is still unmarked, and the job
`preempting` on the victims' node until their grace ends. The victims' agents see the
request when they next ask for cancels (`/api/agent/cancel-requests/`): SIGTERM, the
grace, SIGKILL. The attempt ends `preempted` and the job waits again, no retry used.

While the victims stop, the room they free is held for the preemptor: every placement
(`jobs.scheduling.cycle.place`) takes the held room off the node (`preemption_holds`),
and gives it to the preemptor alone, once it is all free.
"""

import json
import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from common.db import prepared_cursor, sql_literal, sql_literals
from events.models import EventType
from events.services import event_record
from nodes.models import Node, NodeStatus
from resources.models import LIVE_ALLOCATION_STATUSES, AllocationStatus
from resources.placement import NodeSlot, PendingJob, QueueState, Request, Resources
from resources.preemption import (
    Preemption,
    Running,
    Shares,
    Waiting,
    plan_preemptions,
)

from ..models import ExecutionStatus, Job, JobExecution, JobStatus, PendingReason
from ..services.publishing import stop_checks_publish_on_commit

logger = logging.getLogger(__name__)

# Jobs that found no room, as the scheduler told them, and may preempt.
PREEMPTING_FOR = (PendingReason.INSUFFICIENT_CAPACITY, PendingReason.RESERVATION)
# At most this many jobs start a preemption per cycle (each is one node's victims).
PREEMPTIONS_PER_CYCLE = 16

# Anything to do? A running preemptible job, and a job told it found no room. Served by
# the job_running_preemptible and job_pending_by_queue_team indexes. A gang (`tasks` > 1)
# neither preempts nor is preempted: its tasks stand and fall together, on many nodes.
WORTH_A_LOOK_SQL = f"""
SELECT EXISTS (SELECT 1 FROM jobs_job
                WHERE status = {sql_literal(JobStatus.RUNNING)} AND preemptible
                  AND tasks = 1 AND cancel_requested_at IS NULL)
   AND EXISTS (SELECT 1 FROM jobs_job
                WHERE status = {sql_literal(JobStatus.PENDING)} AND tasks = 1
                  AND pending_reason IN ({sql_literals(PREEMPTING_FOR)}))
"""

WAITING_SQL = f"""
SELECT id, queue_id, cpu_millis, memory_mb, gpu, node_selector, priority, team_id
  FROM jobs_job
 WHERE status = {sql_literal(JobStatus.PENDING)} AND tasks = 1
   AND pending_reason IN ({sql_literals(PREEMPTING_FOR)})
   AND (not_before IS NULL OR not_before <= %(now)s)
 ORDER BY priority DESC, deadline ASC NULLS LAST, created_at, id
 LIMIT %(limit)s
 FOR UPDATE SKIP LOCKED
"""

# Running attempts of preemptible jobs no one asked to stop, with their grace.
RUNNING_SQL = f"""
SELECT e.id, e.job_id, a.node_id, j.queue_id, j.priority, e.started_at, a.cpu_millis,
       a.memory_mb, a.gpu, j.team_id, e.attempt, e.token,
       coalesce(q.preemption_grace_seconds, %(grace)s)
  FROM jobs_job j
  JOIN jobs_jobexecution e ON e.id = j.last_execution_id
  JOIN resources_allocation a ON a.execution_id = e.id
  JOIN resources_queue q ON q.id = j.queue_id
 WHERE j.status = {sql_literal(JobStatus.RUNNING)} AND j.preemptible AND j.tasks = 1
   AND j.cancel_requested_at IS NULL
   AND e.status = {sql_literal(ExecutionStatus.RUNNING)} AND e.preempt_requested_at IS NULL
   AND a.status = {sql_literal(AllocationStatus.ACTIVE)}
"""

# Every queue's rules and what its jobs hold, for reclaim and quotas.
QUEUES_SQL = f"""
SELECT q.id, q.name, q.weight, q.quota_cpu_millis, q.quota_memory_mb, q.quota_gpu,
       coalesce(u.cpu_millis, 0), coalesce(u.memory_mb, 0), coalesce(u.gpu, 0)
  FROM resources_queue q
  LEFT JOIN (
    SELECT queue_id, sum(cpu_millis) AS cpu_millis, sum(memory_mb) AS memory_mb,
           sum(gpu) AS gpu
      FROM resources_allocation
     WHERE status IN ({sql_literals(LIVE_ALLOCATION_STATUSES)})
     GROUP BY queue_id
  ) u ON u.queue_id = q.id
"""

# The victims, locked unless being finished (their finish locks them first).
LOCK_VICTIMS_SQL = f"""
SELECT id FROM jobs_jobexecution
 WHERE id = ANY(%(ids)s) AND status = {sql_literal(ExecutionStatus.RUNNING)}
   AND preempt_requested_at IS NULL
 ORDER BY id
 FOR UPDATE SKIP LOCKED
"""

MARK_VICTIMS_SQL = """
UPDATE jobs_jobexecution e
   SET preempt_requested_at = %(now)s, preempted_by_id = v.job
  FROM unnest(%(ids)s::bigint[], %(jobs)s::bigint[]) AS v(id, job)
 WHERE e.id = v.id AND e.preempt_requested_at IS NULL
"""

MARK_PREEMPTORS_SQL = f"""
UPDATE jobs_job j
   SET pending_reason = {sql_literal(PendingReason.PREEMPTING)},
       reservation_node_id = p.node, reservation_start_at = p.until
  FROM unnest(%(jobs)s::bigint[], %(nodes)s::bigint[], %(until)s::timestamptz[])
       AS p(job, node, until)
 WHERE j.id = p.job AND j.status = {sql_literal(JobStatus.PENDING)}
"""

# The room held for each job that is preempting: its request on its node, less what its
# victims there still hold (that room is not free yet). Served by job_preempting_by_node
# and execution_preempted_by.
HOLDS_SQL = f"""
SELECT j.id, j.reservation_node_id, j.cpu_millis, j.memory_mb, j.gpu,
       coalesce(sum(a.cpu_millis), 0), coalesce(sum(a.memory_mb), 0),
       coalesce(sum(a.gpu), 0), count(e.id)
  FROM jobs_job j
  LEFT JOIN jobs_jobexecution e
         ON e.preempted_by_id = j.id
        AND e.status IN ({sql_literal(ExecutionStatus.RESERVED)},
                         {sql_literal(ExecutionStatus.RUNNING)})
  LEFT JOIN resources_allocation a
         ON a.execution_id = e.id AND a.node_id = j.reservation_node_id
        AND a.status IN ({sql_literals(LIVE_ALLOCATION_STATUSES)})
 WHERE j.status = {sql_literal(JobStatus.PENDING)}
   AND j.pending_reason = {sql_literal(PendingReason.PREEMPTING)}
 GROUP BY j.id
"""


@dataclass(frozen=True)
class Hold:
    """Room held on a node for a job whose victims there are stopping."""

    job_id: int
    node_id: int
    room: Resources  # held now: its request less what its victims still hold
    request: Resources
    victims_live: bool


def preemption_holds() -> dict[int, Hold]:
    """{job id: its hold}, for every job that is preempting."""
    with prepared_cursor() as cursor:
        cursor.execute(HOLDS_SQL)
        rows = cursor.fetchall()
    holds = {}
    for job_id, node_id, cpu, memory, gpu, v_cpu, v_memory, v_gpu, victims in rows:
        room = Resources(max(cpu - v_cpu, 0), max(memory - v_memory, 0), max(gpu - v_gpu, 0))
        holds[job_id] = Hold(job_id, node_id, room, Resources(cpu, memory, gpu), victims > 0)
    return holds


def hold_take(slot: NodeSlot, room: Resources, sign: int = 1) -> None:
    """Take the held room off the node's free room (give it back with sign -1)."""
    slot.free_cpu_millis -= sign * room.cpu_millis
    slot.free_memory_mb -= sign * room.memory_mb
    slot.free_gpu -= sign * room.gpu


@dataclass(frozen=True)
class Victim:
    running: Running
    team_id: int
    attempt: int
    token: str
    grace_seconds: int


@dataclass
class PreemptionResult:
    preemptions: list[Preemption]
    victims: dict[int, Victim]  # execution id -> victim


@dataclass
class Snapshot:
    waiting: list[Waiting]
    team_of: dict[int, int]  # waiting job id -> team id
    slots: list[NodeSlot]
    victims: dict[int, Victim]  # execution id -> what could be evicted
    shares: Shares


def preemption_snapshot(*, now, lock: bool, waiting: bool = True) -> Snapshot:
    """What preemption plans from: waiting jobs (locked when `lock`; none unless
    `waiting`), the ready nodes with the held room taken off, the preemptible running
    attempts, and the queues' shares."""
    nodes = Node.objects.exclude(status=NodeStatus.OFFLINE).order_by("id")
    nodes = list(nodes.select_for_update() if lock else nodes)
    slots = {n.id: NodeSlot.of(n) for n in nodes if n.status == NodeStatus.READY}
    for hold in preemption_holds().values():
        if hold.node_id in slots:
            hold_take(slots[hold.node_id], hold.room)
    waiting_rows = []
    with prepared_cursor() as cursor:
        if waiting:
            cursor.execute(WAITING_SQL, {"now": now, "limit": PREEMPTIONS_PER_CYCLE * 4})
            waiting_rows = cursor.fetchall()
        cursor.execute(RUNNING_SQL, {"grace": settings.PREEMPTION_GRACE_SECONDS})
        running_rows = cursor.fetchall()
        cursor.execute(QUEUES_SQL)
        queue_rows = cursor.fetchall()
    found, team_of = [], {}
    for job_id, queue_id, cpu, memory, gpu, selector, priority, team_id in waiting_rows:
        selector = json.loads(selector) if isinstance(selector, str) else selector
        request = Request(cpu, memory, gpu, selector or {})
        found.append(Waiting(PendingJob(job_id, queue_id, request), priority))
        team_of[job_id] = team_id
    victims = {}
    for row in running_rows:
        execution_id, job_id, node_id, queue_id, priority, started_at, *held = row[:9]
        team_id, attempt, token, grace = row[9:]
        running = Running(
            execution_id,
            job_id,
            node_id,
            queue_id,
            priority,
            True,
            started_at.timestamp() if started_at else now.timestamp(),
            *held,
        )
        victims[execution_id] = Victim(running, team_id, attempt, token, grace)
    queues = {
        qid: QueueState(
            id=qid,
            name=name,
            weight=weight,
            quota_cpu_millis=quota_cpu,
            quota_memory_mb=quota_memory,
            quota_gpu=quota_gpu,
            allocated=Resources(*used),
        )
        for qid, name, weight, quota_cpu, quota_memory, quota_gpu, *used in queue_rows
    }
    active = {q.id for q in queues.values() if q.allocated != Resources()}
    active |= {w.job.queue_id for w in found}
    capacity = Resources(
        sum(n.cpu_millis for n in nodes), sum(n.memory_mb for n in nodes), sum(n.gpu for n in nodes)
    )
    shares = Shares(capacity=capacity, queues=queues, active=active)
    return Snapshot(found, team_of, list(slots.values()), victims, shares)


def preemption_worth_a_look() -> bool:
    with prepared_cursor() as cursor:
        cursor.execute(WORTH_A_LOOK_SQL)
        return bool(cursor.fetchone()[0])


@transaction.atomic
def preempt_for_waiting_jobs() -> PreemptionResult:
    """Choose and record preemptions for jobs that found no room (see the module's
    docstring); their victims' nodes stop them."""
    result = PreemptionResult([], {})
    if not preemption_worth_a_look():
        return result
    now = timezone.now()
    snapshot = preemption_snapshot(now=now, lock=True)
    victims = snapshot.victims
    if not snapshot.waiting or not victims:
        return result
    planned = plan_preemptions(
        waiting=snapshot.waiting,
        nodes=snapshot.slots,
        running=[v.running for v in victims.values()],
        shares=snapshot.shares,
        limit=PREEMPTIONS_PER_CYCLE,
    )
    if not planned:
        return result
    wanted = [v.id for p in planned for v in p.victims]
    with prepared_cursor() as cursor:
        cursor.execute(LOCK_VICTIMS_SQL, {"ids": wanted})
        locked = {row[0] for row in cursor.fetchall()}
    planned = [p for p in planned if all(v.id in locked for v in p.victims)]
    if not planned:
        return result
    team_of = snapshot.team_of
    ids, jobs, nodes, until = [], [], [], []
    for preemption in planned:
        grace = max(victims[v.id].grace_seconds for v in preemption.victims)
        nodes.append(preemption.node.id)
        jobs.append(preemption.job.id)
        until.append(now + timedelta(seconds=grace))
        for victim in preemption.victims:
            ids.append(victim.id)
    with prepared_cursor() as cursor:
        cursor.execute(
            MARK_VICTIMS_SQL,
            {
                "now": now,
                "ids": ids,
                "jobs": [p.job.id for p in planned for _ in p.victims],
            },
        )
        cursor.execute(MARK_PREEMPTORS_SQL, {"jobs": jobs, "nodes": nodes, "until": until})
    for preemption in planned:
        tokens = [victims[v.id].token for v in preemption.victims]
        event_record(
            type=EventType.JOB_RESERVED,
            team_id=team_of[preemption.job.id],
            job_id=preemption.job.id,
            node_id=preemption.node.id,
            message=f"room held on node {preemption.node.name}: preempting " + ", ".join(tokens),
            data={"node": preemption.node.name, "preempting": tokens},
        )
        logger.info(
            "preempting for job=%s node=%s victims=%s",
            preemption.job.id,
            preemption.node.name,
            " ".join(f"token={t}" for t in tokens),
        )
    stop_checks_publish_on_commit(node_names=[p.node.name for p in planned])
    result.preemptions = planned
    result.victims = {v.id: victims[v.id] for p in planned for v in p.victims}
    return result


@dataclass(frozen=True)
class _Shown:
    job_id: int
    token: str
    priority: int
    node: str


def _victims_json(victims) -> list[dict]:
    return [
        {"job": v.job_id, "token": v.token, "priority": v.priority, "node": v.node} for v in victims
    ]


def job_preemption_preview(*, job: Job) -> dict | None:
    """For `GET /api/jobs/{id}/why/`, changing nothing: the preemption under way for a
    pending job (reason `preempting`), or the one the scheduler would start for it now
    (reason insufficient_capacity or reservation); None when there is none."""
    if job.pending_reason == PendingReason.PREEMPTING:
        live = (
            JobExecution.objects.filter(
                preempted_by=job,
                status__in=(ExecutionStatus.RESERVED, ExecutionStatus.RUNNING),
            )
            .order_by("id")
            .values_list("job_id", "token", "job__priority", "node__name")
        )
        node = Node.objects.filter(pk=job.reservation_node_id).values_list("name", flat=True)
        return {
            "state": "under_way",
            "node": node.first(),
            "grace_ends_at": job.reservation_start_at,
            "victims": _victims_json(_Shown(*row) for row in live),
        }
    if job.pending_reason not in PREEMPTING_FOR or job.tasks > 1:
        return None
    snapshot = preemption_snapshot(now=timezone.now(), lock=False, waiting=False)
    request = Request(job.cpu_millis, job.memory_mb, job.gpu, job.node_selector or {})
    snapshot.shares.active.add(job.queue_id)
    planned = plan_preemptions(
        waiting=[Waiting(PendingJob(job.id, job.queue_id, request), job.priority)],
        nodes=snapshot.slots,
        running=[v.running for v in snapshot.victims.values()],
        shares=snapshot.shares,
    )
    if not planned:
        return None
    preemption = planned[0]
    shown = [
        _Shown(v.job_id, snapshot.victims[v.id].token, v.priority, preemption.node.name)
        for v in preemption.victims
    ]
    return {
        "state": "would_preempt",
        "node": preemption.node.name,
        "grace_ends_at": None,
        "victims": _victims_json(shown),
    }
