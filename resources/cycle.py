"""The scheduling cycle: place pending jobs on ready nodes, in one transaction.

Snapshot (lock the pending jobs this cycle takes, then the ready nodes), place in memory
with `resources.placement`, write executions, allocations, job statuses and node
counters in a fixed number of statements, commit once, then publish one message per
placement. The number of queries does not grow with the number of jobs or nodes.
"""

import logging
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


@dataclass
class CycleResult:
    considered: int = 0
    tokens: list[str] = field(default_factory=list)
    waiting: dict[str, int] = field(default_factory=dict)

    @property
    def placed(self) -> int:
        return len(self.tokens)


def run_cycle(*, batch_size: int) -> CycleResult:
    """One full cycle: place and commit, then publish the placed executions."""
    result = place_pending_jobs(batch_size=batch_size)
    for token in result.tokens:
        execution_publish(token=token)
    return result


@transaction.atomic
def place_pending_jobs(*, batch_size: int) -> CycleResult:
    now = timezone.now()
    # Jobs first, then nodes: every service that touches both locks them in this order.
    jobs = list(
        Job.objects.select_for_update(skip_locked=True)
        .filter(status=JobStatus.PENDING)
        .filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
        .order_by("-priority", "created_at", "id")
        .only(
            "id", "cpu_millis", "memory_mb", "gpu", "node_selector", "attempts", "pending_reason"
        )[:batch_size]
    )
    result = CycleResult(considered=len(jobs))
    if not jobs:
        return result
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

    executions: list[JobExecution] = []
    allocations: list[Allocation] = []
    waiting: dict[str, list[int]] = defaultdict(list)
    touched: dict[int, NodeSlot] = {}
    for job in jobs:
        request = Request(job.cpu_millis, job.memory_mb, job.gpu, job.node_selector or {})
        choice = choose_node(slots, request)
        if isinstance(choice, Unplaced):
            if job.pending_reason != choice.value:
                waiting[choice.value].append(job.id)
            result.waiting[choice.value] = result.waiting.get(choice.value, 0) + 1
            continue
        choice.take(request)
        touched[choice.id] = choice
        attempt = job.attempts + 1
        token = execution_token(job.id, attempt)
        executions.append(
            JobExecution(
                job_id=job.id,
                attempt=attempt,
                node_id=choice.id,
                token=token,
                status=ExecutionStatus.RESERVED,
                reserved_at=now,
            )
        )
        allocations.append(
            Allocation(
                node_id=choice.id,
                cpu_millis=job.cpu_millis,
                memory_mb=job.memory_mb,
                gpu=job.gpu,
                status=AllocationStatus.RESERVED,
            )
        )
        result.tokens.append(token)

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
    for reason, job_ids in waiting.items():
        Job.objects.filter(id__in=job_ids).update(pending_reason=reason)
    if result.placed or result.waiting:
        logger.info(
            "cycle considered=%s placed=%s waiting=%s",
            result.considered,
            result.placed,
            result.waiting,
        )
    return result
