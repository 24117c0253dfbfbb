"""Writes for nodes: registration, heartbeats, and the end of a drain."""

import logging

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from resources.services import scheduler_wake

from .models import Node, NodeStatus

logger = logging.getLogger(__name__)


@transaction.atomic
def node_register(
    *,
    name: str,
    cpu_millis: int,
    memory_mb: int,
    gpu: int = 0,
    labels: dict | None = None,
    address: str = "",
    agent_version: str = "",
) -> Node:
    """Create the node or update its capacity and labels; an offline node comes back ready.

    A cordoned or draining node stays so: that was an operator's decision.
    """
    node = Node.objects.select_for_update().filter(name=name).first()
    if node is None:
        node = Node(name=name)
    elif (
        cpu_millis < node.allocated_cpu_millis
        or memory_mb < node.allocated_memory_mb
        or gpu < node.allocated_gpu
    ):
        raise ValidationError(
            f"Node {name} has more allocated ({node.allocated_cpu_millis} CPU millis, "
            f"{node.allocated_memory_mb} MB, {node.allocated_gpu} GPU) than the new capacity; "
            "drain it first."
        )
    if node.status == NodeStatus.OFFLINE:
        node.status = NodeStatus.READY
    node.cpu_millis, node.memory_mb, node.gpu = cpu_millis, memory_mb, gpu
    node.labels = labels or {}
    node.address = address
    node.agent_version = agent_version
    node.last_heartbeat = timezone.now()
    node.save()
    scheduler_wake()
    logger.info(
        "node registered node=%s cpu_millis=%s memory_mb=%s gpu=%s labels=%s",
        name,
        cpu_millis,
        memory_mb,
        gpu,
        node.labels,
    )
    return node


def node_heartbeat(*, name: str) -> bool:
    return bool(Node.objects.filter(name=name).update(last_heartbeat=timezone.now()))


# Nothing allocated on the node: every allocation holds at least one CPU milli, since a
# job must request some CPU, so zero counters mean no live allocation.
EMPTY = Q(allocated_cpu_millis=0, allocated_memory_mb=0, allocated_gpu=0)


def node_drain_complete() -> int:
    """Draining nodes with nothing left on them become cordoned; how many did."""
    names = list(
        Node.objects.filter(EMPTY, status=NodeStatus.DRAINING).values_list("name", flat=True)
    )
    if not names:
        return 0
    done = Node.objects.filter(EMPTY, name__in=names, status=NodeStatus.DRAINING).update(
        status=NodeStatus.CORDONED, updated_at=timezone.now()
    )
    logger.info("nodes drained, now cordoned nodes=%s", ",".join(names))
    return done
