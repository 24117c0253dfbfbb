"""Reads for resources: allocations and what they hold."""

from .models import LIVE_ALLOCATION_STATUSES, Allocation


def allocation_node_name(*, token: str) -> str | None:
    return (
        Allocation.objects.filter(execution__token=token, status__in=LIVE_ALLOCATION_STATUSES)
        .values_list("node__name", flat=True)
        .first()
    )
