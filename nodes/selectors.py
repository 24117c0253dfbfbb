"""Reads for nodes."""

from django.db.models import Max

from .models import Node, NodeStatus


def node_capacity_maxima() -> dict:
    """The largest capacity any node has, per resource (None when no node is registered)."""
    return Node.objects.aggregate(
        cpu_millis=Max("cpu_millis"), memory_mb=Max("memory_mb"), gpu=Max("gpu")
    )


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
