"""Reads for nodes."""

from django.db.models import Max

from .models import Node, NodeStatus


def node_capacity_maxima() -> dict:
    """The largest capacity any node has, per resource (None when no node is registered)."""
    return Node.objects.aggregate(
        cpu_millis=Max("cpu_millis"), memory_mb=Max("memory_mb"), gpu=Max("gpu")
    )


def node_task_room(*, cpu_millis: int, memory_mb: int, gpu: int, node_selector: dict) -> int:
    """How many tasks of this request the registered nodes that match the selector could
    hold at once, each node empty: whether a gang could ever be placed."""
    room = 0
    nodes = Node.objects.values_list("cpu_millis", "memory_mb", "gpu", "labels")
    for node_cpu, node_memory, node_gpu, labels in nodes.iterator():
        if any((labels or {}).get(key) != value for key, value in node_selector.items()):
            continue
        room += min(
            have // wanted
            for have, wanted in ((node_cpu, cpu_millis), (node_memory, memory_mb), (node_gpu, gpu))
            if wanted
        )
    return room


def node_list():
    return Node.objects.order_by("name")


def node_ids_offline_with_live_executions() -> list[int]:
    return list(
        Node.objects.filter(
            status=NodeStatus.OFFLINE, executions__status__in=("reserved", "running")
        )
        .distinct()
        .values_list("id", flat=True)
    )
