"""The scheduling cycle: place pending jobs on ready nodes, in one transaction.

Snapshot (lock the ready nodes, then stream the pending jobs in priority order until
the cluster is full), place in memory with `resources.placement`, write executions,
allocations, job statuses and node counters in a fixed number of statements, commit
once, then publish one message per placement. The number of queries does not grow with
the number of jobs or nodes, and a cycle that finds no room does not read the backlog.
"""

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import F, OuterRef, Q, Subquery
from django.utils import timezone

from jobs.models import (
    ExecutionStatus,
    Job,
    JobExecution,
    JobStatus,
    PendingReason,
    execution_token,
)
from jobs.services import execution_publish
from nodes.models import Node, NodeStatus

from .models import Allocation, AllocationStatus
from .placement import NodeSlot, Request, Unplaced, choose_node

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dispatch:
    token: str
    node_name: str


@dataclass
class CycleResult:
    considered: int = 0
    dispatches: list[Dispatch] = field(default_factory=list)
    waiting: dict[str, int] = field(default_factory=dict)

    @property
    def placed(self) -> int:
        return len(self.dispatches)

    @property
    def tokens(self) -> list[str]:
        return [d.token for d in self.dispatches]


def run_cycle(*, batch_size: int) -> CycleResult:
    """One full cycle: place and commit, then publish the placed executions."""
    started = time.perf_counter()
    result = place_pending_jobs(batch_size=batch_size)
    placed = time.perf_counter()
    for dispatch in result.dispatches:
        execution_publish(token=dispatch.token, node_name=dispatch.node_name)
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


# Pending jobs are read from the database this many at a time.
FETCH_CHUNK = 256


def _stream(candidates, limit: int):
    """Pending jobs as tuples, highest priority then oldest first, read a chunk at a time."""
    return (
        candidates.order_by("-priority", "created_at", "id")
        .values_list(
            "id", "cpu_millis", "memory_mb", "gpu", "node_selector", "attempts", "pending_reason"
        )[:limit]
        .iterator(chunk_size=FETCH_CHUNK)
    )


@transaction.atomic
def place_pending_jobs(*, batch_size: int) -> CycleResult:
    now = timezone.now()
    # Nodes first, then jobs. Jobs are taken with SKIP LOCKED, so the cycle never waits
    # for a job lock while it holds the nodes, and a cancel holding a job never waits
    # for a cycle that waits for it.
    nodes = list(Node.objects.select_for_update().filter(status=NodeStatus.READY).order_by("id"))
    slots = [
        NodeSlot(
            id=n.id,
            name=n.name,
            cpu_millis=n.cpu_millis,
            memory_mb=n.memory_mb,
            gpu=n.gpu,
            free_cpu_millis=n.free_cpu_millis,
            free_memory_mb=n.free_memory_mb,
            free_gpu=n.free_gpu,
            labels=n.labels,
        )
        for n in nodes
    ]
    with_room = sum(slot.free_cpu_millis > 0 for slot in slots)
    candidates = (
        Job.objects.select_for_update(skip_locked=True)
        .filter(status=JobStatus.PENDING)
        .filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
    )
    if not with_room:
        # Every job needs some CPU and no node has any: only tell new arrivals why they wait.
        candidates = candidates.filter(pending_reason=PendingReason.NONE)
    rows = _stream(candidates, batch_size)
    result = CycleResult()
    executions: list[JobExecution] = []
    allocations: list[Allocation] = []
    waiting: dict[str, list[int]] = defaultdict(list)
    touched: dict[int, NodeSlot] = {}

    def wait(job_id: int, reason: str, why: Unplaced) -> None:
        if reason != why.value:
            waiting[why.value].append(job_id)
        result.waiting[why.value] = result.waiting.get(why.value, 0) + 1

    filled_up = False
    for job_id, cpu_millis, memory_mb, gpu, selector, attempts, reason in rows:
        result.considered += 1
        request = Request(cpu_millis, memory_mb, gpu, selector or {})
        choice = choose_node(slots, request)
        if isinstance(choice, Unplaced):
            wait(job_id, reason, choice)
            continue
        had_room = choice.free_cpu_millis > 0
        choice.take(request)
        with_room -= had_room and choice.free_cpu_millis <= 0
        touched[choice.id] = choice
        token = execution_token(job_id, attempts + 1)
        executions.append(
            JobExecution(
                job_id=job_id,
                attempt=attempts + 1,
                node_id=choice.id,
                token=token,
                status=ExecutionStatus.RESERVED,
                reserved_at=now,
            )
        )
        allocations.append(
            Allocation(
                node_id=choice.id,
                cpu_millis=cpu_millis,
                memory_mb=memory_mb,
                gpu=gpu,
                status=AllocationStatus.RESERVED,
            )
        )
        result.dispatches.append(Dispatch(token, choice.name))
        if not with_room:
            filled_up = True  # the rest of the backlog keeps its reasons
            break
    rows.close()

    if executions:
        JobExecution.objects.bulk_create(executions)
        for execution, allocation in zip(executions, allocations, strict=True):
            allocation.execution_id = execution.id
        Allocation.objects.bulk_create(allocations)
        Job.objects.filter(id__in=[e.job_id for e in executions]).update(
            status=JobStatus.RESERVED,
            pending_reason=PendingReason.NONE,
            attempts=F("attempts") + 1,
            last_execution=Subquery(
                JobExecution.objects.filter(job_id=OuterRef("pk"))
                .order_by("-attempt")
                .values("id")[:1]
            ),
        )
        by_id = {n.id: n for n in nodes}
        changed = []
        for slot in touched.values():
            node = by_id[slot.id]
            node.allocated_cpu_millis = node.cpu_millis - slot.free_cpu_millis
            node.allocated_memory_mb = node.memory_mb - slot.free_memory_mb
            node.allocated_gpu = node.gpu - slot.free_gpu
            changed.append(node)
        Node.objects.bulk_update(
            changed, ["allocated_cpu_millis", "allocated_memory_mb", "allocated_gpu"]
        )
    if filled_up:
        # Jobs that arrived since the last cycle learn why they wait (the ones placed
        # above are no longer pending by now).
        arrivals = candidates.filter(pending_reason=PendingReason.NONE)
        for job_id, cpu_millis, memory_mb, gpu, selector, _, reason in _stream(
            arrivals, batch_size
        ):
            request = Request(cpu_millis, memory_mb, gpu, selector or {})
            wait(job_id, reason, choose_node(slots, request))
    for reason, job_ids in waiting.items():
        Job.objects.filter(id__in=job_ids).update(pending_reason=reason)
    return result
