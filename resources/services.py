"""Writes for resources: releasing allocations against node counters, and queues.

Every change to a node's allocated counters outside the scheduling cycle happens here,
inside the caller's transaction, and the CHECK constraints on `nodes.Node` refuse any
that would oversubscribe. A release is a conditional update, so it happens exactly once.
"""

import logging

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, ProtectedError
from django.utils import timezone

from accounts.models import Team
from nodes.models import Node

from .models import (
    DEFAULT_QUEUE_NAME,
    LIVE_ALLOCATION_STATUSES,
    Allocation,
    AllocationStatus,
    PlacementStrategy,
    Queue,
)

logger = logging.getLogger(__name__)


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


# The wake-up of a submission. Every other wake-up says nothing: it may mean room.
ARRIVAL = "arrival"


def scheduler_wake(payload: str = "") -> None:
    """Ask the scheduler for a cycle as soon as the current transaction commits."""
    with transaction.get_connection().cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [SCHEDULER_CHANNEL, payload])


def _queue_save(queue: Queue, *, teams: list[Team] | None) -> Queue:
    if teams and queue.all_teams:
        raise ValidationError({"teams": ["A queue open to all teams lists none."]})
    queue.full_clean(exclude=["teams"])
    with transaction.atomic():
        queue.save()
        if teams is not None:
            queue.teams.set(teams)
        # A new weight, quota or priority may let waiting jobs start.
        scheduler_wake()
    return queue


def queue_create(
    *,
    name: str,
    all_teams: bool = False,
    teams: list[Team] | None = None,
    weight: int = 1,
    priority: int = 0,
    strategy: str = PlacementStrategy.BINPACK,
    quota_cpu_millis: int | None = None,
    quota_memory_mb: int | None = None,
    quota_gpu: int | None = None,
) -> Queue:
    queue = Queue(
        name=name,
        all_teams=all_teams,
        weight=weight,
        priority=priority,
        strategy=strategy,
        quota_cpu_millis=quota_cpu_millis,
        quota_memory_mb=quota_memory_mb,
        quota_gpu=quota_gpu,
    )
    queue = _queue_save(queue, teams=teams or [])
    logger.info("queue created queue=%s", queue.name)
    return queue


QUEUE_FIELDS = (
    "name",
    "all_teams",
    "weight",
    "priority",
    "strategy",
    "quota_cpu_millis",
    "quota_memory_mb",
    "quota_gpu",
)


def queue_update(*, queue: Queue, teams: list[Team] | None = None, **changes) -> Queue:
    """Change the given fields (any of QUEUE_FIELDS) and, when given, the teams.

    Jobs already running keep running when a quota goes down; no new ones start until
    the queue is back under it.
    """
    unknown = set(changes) - set(QUEUE_FIELDS)
    if unknown:
        raise TypeError(f"not queue fields: {sorted(unknown)}")
    if queue.name == DEFAULT_QUEUE_NAME and changes.get("name", queue.name) != queue.name:
        raise ValidationError({"name": ["The default queue keeps its name."]})
    for field, value in changes.items():
        setattr(queue, field, value)
    if teams is None and queue.all_teams and queue.teams.exists():
        teams = []  # opened to every team: the list no longer means anything
    queue = _queue_save(queue, teams=teams)
    logger.info("queue updated queue=%s fields=%s", queue.name, sorted(changes))
    return queue


def queue_delete(*, queue: Queue) -> None:
    """Delete a queue no job or definition was ever submitted to; never the default."""
    if queue.name == DEFAULT_QUEUE_NAME:
        raise ValidationError("The default queue cannot be deleted.")
    try:
        queue.delete()
    except ProtectedError as exc:
        raise ValidationError(
            f"Queue {queue.name} has jobs or definitions; it cannot be deleted."
        ) from exc
    logger.info("queue deleted queue=%s", queue.name)
