"""Writes for resources: reserving and releasing allocations against node counters.

Every change to a node's allocated counters happens here, inside the caller's
transaction, and the CHECK constraints on `nodes.Node` refuse any that would
oversubscribe. A release is a conditional update, so it happens exactly once.
"""

import logging

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from nodes.models import Node

from .models import LIVE_ALLOCATION_STATUSES, Allocation, AllocationStatus

logger = logging.getLogger(__name__)


def allocation_activate(*, execution_id: int) -> bool:
    return bool(
        Allocation.objects.filter(
            execution_id=execution_id, status=AllocationStatus.RESERVED
        ).update(status=AllocationStatus.ACTIVE, activated_at=timezone.now())
    )


def allocation_release(*, execution_id: int) -> bool:
    """Release the execution's allocation and give its resources back to the node.

    Returns False when it was already released: the second caller changes nothing.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("allocation_release must run inside the caller's transaction")
    allocation = (
        Allocation.objects.filter(execution_id=execution_id, status__in=LIVE_ALLOCATION_STATUSES)
        .only("id", "node_id", "cpu_millis", "memory_mb", "gpu")
        .first()
    )
    if allocation is None:
        return False
    released = Allocation.objects.filter(
        pk=allocation.pk, status__in=LIVE_ALLOCATION_STATUSES
    ).update(status=AllocationStatus.RELEASED, released_at=timezone.now())
    if not released:
        return False
    Node.objects.filter(pk=allocation.node_id).update(
        allocated_cpu_millis=F("allocated_cpu_millis") - allocation.cpu_millis,
        allocated_memory_mb=F("allocated_memory_mb") - allocation.memory_mb,
        allocated_gpu=F("allocated_gpu") - allocation.gpu,
    )
    logger.info(
        "allocation released execution=%s node=%s cpu_millis=%s memory_mb=%s gpu=%s",
        execution_id,
        allocation.node_id,
        allocation.cpu_millis,
        allocation.memory_mb,
        allocation.gpu,
    )
    return True


# The channel the scheduler LISTENs on. A NOTIFY sent inside a transaction is delivered
# only when it commits, so the scheduler never wakes before the data it should see.
SCHEDULER_CHANNEL = "scheduler_wakeup"


def scheduler_wake() -> None:
    """Ask the scheduler for a cycle as soon as the current transaction commits."""
    with transaction.get_connection().cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, '')", [SCHEDULER_CHANNEL])
