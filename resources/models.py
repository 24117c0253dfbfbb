"""Allocations: the resources an execution holds on a node."""

from django.db import models
from django.db.models import Q


class AllocationStatus(models.TextChoices):
    RESERVED = "reserved", "Reserved"  # placed; the node has not started it yet
    ACTIVE = "active", "Active"  # the node agent claimed it and runs it
    RELEASED = "released", "Released"


LIVE_ALLOCATION_STATUSES = (AllocationStatus.RESERVED, AllocationStatus.ACTIVE)


class Allocation(models.Model):
    execution = models.OneToOneField(
        "jobs.JobExecution", on_delete=models.PROTECT, related_name="allocation"
    )
    node = models.ForeignKey("nodes.Node", on_delete=models.PROTECT, related_name="allocations")
    cpu_millis = models.PositiveIntegerField()
    memory_mb = models.PositiveIntegerField()
    gpu = models.PositiveIntegerField(default=0)
    status = models.CharField(
        max_length=16, choices=AllocationStatus.choices, default=AllocationStatus.RESERVED
    )
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=AllocationStatus.values), name="allocation_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(status=AllocationStatus.RELEASED, released_at__isnull=False)
                | (~Q(status=AllocationStatus.RELEASED) & Q(released_at__isnull=True)),
                name="allocation_released_at_iff_released",
            ),
        ]
        indexes = [
            # Used by the usage figures and the consistency checks: live allocations per node.
            models.Index(
                fields=["node", "status"],
                name="allocation_live_by_node",
                condition=Q(status__in=LIVE_ALLOCATION_STATUSES),
            ),
        ]

    def __str__(self):
        return f"{self.execution_id} on {self.node_id} ({self.status})"
