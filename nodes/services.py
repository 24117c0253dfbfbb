"""Writes for nodes: registration and heartbeats."""

import logging
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
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
    # A new agent runs nothing yet; whatever the old one ran is found and failed over.
    node.running_tokens = []
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


def node_heartbeat(*, name: str, at: datetime, running_tokens: list[str]) -> bool:
    """Record that the agent was alive at `at`, running exactly `running_tokens`."""
    return bool(
        Node.objects.filter(name=name).update(last_heartbeat=at, running_tokens=running_tokens)
    )


def nodes_mark_lost(*, older_than_seconds: float) -> list[str]:
    """Nodes silent for longer than `older_than_seconds` go offline; returns their names."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    with transaction.atomic():
        names = list(
            Node.objects.select_for_update(skip_locked=True)
            .exclude(status=NodeStatus.OFFLINE)
            .filter(last_heartbeat__lt=cutoff)
            .values_list("name", flat=True)
        )
        if names:
            Node.objects.filter(name__in=names).update(status=NodeStatus.OFFLINE)
    for name in names:
        logger.warning("node lost node=%s silent_for_more_than=%ss", name, older_than_seconds)
    return names
