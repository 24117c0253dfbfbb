"""Execution nodes: their capacity, what is allocated on them, their liveness, and the
credentials their agents authenticate with."""

import re

from django.db import models
from django.db.models import F, Q


class NodeStatus(models.TextChoices):
    READY = "ready", "Ready"
    CORDONED = "cordoned", "Cordoned"
    DRAINING = "draining", "Draining"
    OFFLINE = "offline", "Offline"


RESOURCES = ("cpu_millis", "memory_mb", "gpu")
# A DNS label: the node's name appears in its queue, node.<name>.
NODE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class Node(models.Model):
    name = models.CharField(
        max_length=63,
        unique=True,
        help_text="DNS-label style, e.g. gpu-01; the node's Celery queue is node.<name>.",
    )
    address = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=16, choices=NodeStatus.choices, default=NodeStatus.READY)
    labels = models.JSONField(default=dict, blank=True, help_text='e.g. {"zone": "a"}')

    cpu_millis = models.PositiveIntegerField(help_text="Capacity in thousandths of a core.")
    memory_mb = models.PositiveIntegerField()
    gpu = models.PositiveIntegerField(default=0)

    # Kept equal to the sum of the node's live allocations by resources.services.
    allocated_cpu_millis = models.PositiveIntegerField(default=0)
    allocated_memory_mb = models.PositiveIntegerField(default=0)
    allocated_gpu = models.PositiveIntegerField(default=0)

    last_heartbeat = models.DateTimeField(null=True, blank=True)
    # Seconds between its last two heartbeats while it was up: NODE_HEARTBEAT_SECONDS and
    # a little, unless the heartbeats waited, on the way or in a busy web server (see
    # nodes.services.node_loss_stretch). Empty until it has two, and after it was lost.
    heartbeat_gap_seconds = models.FloatField(null=True, blank=True)
    # The execution tokens the agent was running at its last heartbeat.
    running_tokens = models.JSONField(default=list, blank=True)
    # What the node's jobs really used at its last heartbeat, as its agent sampled it:
    # CPU time per second in thousandths of a core, and resident memory. Empty when the
    # agent did not say (an agent that does not sample, or a node never heard from).
    used_cpu_millis = models.PositiveIntegerField(null=True, blank=True)
    used_memory_mb = models.PositiveIntegerField(null=True, blank=True)
    agent_version = models.CharField(max_length=32, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=NodeStatus.values), name="node_status_valid"
            ),
            # Invariant 1: no oversubscription can be committed, whatever the code does.
            *(
                models.CheckConstraint(
                    condition=Q(**{f"allocated_{r}__gte": 0}) & Q(**{f"allocated_{r}__lte": F(r)}),
                    name=f"node_allocated_{r}_within_capacity",
                )
                for r in RESOURCES
            ),
        ]

    def __str__(self):
        return self.name

    @property
    def queue_name(self) -> str:
        return node_queue_name(self.name)

    @property
    def free_cpu_millis(self) -> int:
        return self.cpu_millis - self.allocated_cpu_millis

    @property
    def free_memory_mb(self) -> int:
        return self.memory_mb - self.allocated_memory_mb

    @property
    def free_gpu(self) -> int:
        return self.gpu - self.allocated_gpu


def node_queue_name(node_name: str) -> str:
    return f"node.{node_name}"


def node_stops_queue_name(node_name: str) -> str:
    """The queue that tells a node's agent to ask which of its executions to stop (node
    names have no dots, so it is no other node's queue)."""
    return f"node.{node_name}.stops"


class NodeLoss(models.Model):
    """One time a node went offline because its agent fell silent. By name, not by
    reference, so the history outlives the node: `scheduler_nodes_lost_total` counts
    these rows and must never go down."""

    node_name = models.CharField(max_length=63)
    lost_at = models.DateTimeField()
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    # What the node was when it went offline: an operator's cordon (or drain) outlives
    # the loss, and the node comes back as it was (`node_status_after_loss`).
    status_before = models.CharField(
        max_length=16, choices=NodeStatus.choices, default=NodeStatus.READY
    )

    class Meta:
        ordering = ["-lost_at", "-id"]
        indexes = [
            # Used when a node comes back: its latest loss.
            models.Index(fields=["node_name", "-lost_at"], name="nodeloss_node_latest_idx")
        ]

    def __str__(self):
        return f"{self.node_name} lost at {self.lost_at.isoformat()}"


class NodeCredential(models.Model):
    """A node agent's key for `POST /api/nodes/register/` and its heartbeats, good for one
    node name only. Only a SHA-256 digest of the key is stored; `manage.py
    issue_node_token NAME` prints the key once."""

    node_name = models.CharField(max_length=63)
    # The public part of the key, used to find the row without scanning digests.
    prefix = models.CharField(max_length=16, unique=True)
    digest = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["node_name", "-created_at"]
        indexes = [models.Index(fields=["node_name"], name="nodecredential_node_name_idx")]

    def __str__(self):
        return f"{self.node_name} ({self.prefix}…)"

    @property
    def audit_actor_name(self) -> str:
        return f"node:{self.node_name}"
