"""Queues that jobs are submitted into, and allocations: what an execution holds on a node."""

from django.db import models
from django.db.models import Q

# Every team may submit here; created by migration and never deleted.
DEFAULT_QUEUE_NAME = "default"


class PlacementStrategy(models.TextChoices):
    BINPACK = "binpack", "Bin-pack: the fullest node that fits"
    SPREAD = "spread", "Spread: the emptiest node that fits"


class Queue(models.Model):
    """Where teams submit jobs: who may use it, its fair share, its quota and priority.

    The scheduler serves queues of higher priority first, and among equals the one
    furthest below its weighted share of the cluster (dominant resource fair share).
    """

    name = models.SlugField(max_length=63, unique=True, help_text="e.g. gpu-training")
    all_teams = models.BooleanField(
        default=False, help_text="Every team may submit here; otherwise only the teams listed."
    )
    teams = models.ManyToManyField("accounts.Team", blank=True, related_name="queues")
    weight = models.PositiveIntegerField(
        default=1, help_text="Fair share: weight 3 deserves three times what weight 1 does."
    )
    priority = models.IntegerField(
        default=0, help_text="Higher is served first, before any fair-share ordering."
    )
    strategy = models.CharField(
        max_length=16, choices=PlacementStrategy.choices, default=PlacementStrategy.BINPACK
    )
    # The most this queue's jobs may hold at once; empty is no limit.
    quota_cpu_millis = models.PositiveIntegerField(
        null=True, blank=True, help_text="Thousandths of a core, e.g. 8000 for 8 CPU."
    )
    quota_memory_mb = models.PositiveIntegerField(null=True, blank=True)
    quota_gpu = models.PositiveIntegerField(null=True, blank=True)
    default_timeout_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Time limit of its jobs that set none, e.g. 3600. Reservations for large "
        "jobs are computed from time limits; a job running with none blocks them on its node.",
    )
    preemptible_default = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Whether its jobs may be preempted by higher-priority work, unless a job "
        "says otherwise.",
    )
    preemption_grace_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Between SIGTERM and SIGKILL when one of its jobs is preempted, e.g. 30; "
        "empty is the PREEMPTION_GRACE_SECONDS setting.",
    )
    # What it used over the last days, as a share of the cluster (0 to 1), decayed by
    # FAIR_SHARE_HALF_LIFE_DAYS; the scheduler's leader keeps it (see
    # jobs.services.fair_share), and placement adds it to what the queue holds now.
    past_share = models.FloatField(default=0, db_default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(weight__gte=1, weight__lte=1000), name="queue_weight_range"
            ),
            models.CheckConstraint(
                condition=Q(past_share__gte=0, past_share__lte=1), name="queue_past_share_range"
            ),
            models.CheckConstraint(
                condition=Q(strategy__in=PlacementStrategy.values), name="queue_strategy_valid"
            ),
        ]

    def __str__(self):
        return self.name


class AllocationStatus(models.TextChoices):
    RESERVED = "reserved", "Reserved"  # placed; the node has not started it yet
    ACTIVE = "active", "Active"  # the node agent claimed it and runs it
    RELEASED = "released", "Released"


LIVE_ALLOCATION_STATUSES = (AllocationStatus.RESERVED, AllocationStatus.ACTIVE)


class Allocation(models.Model):
    execution = models.OneToOneField(
        "jobs.JobExecution", on_delete=models.PROTECT, related_name="allocation"
    )
    # Indexed by the (node, created_at) and (node, status) keys below.
    node = models.ForeignKey(
        "nodes.Node", on_delete=models.PROTECT, related_name="allocations", db_index=False
    )
    # The queue the job was placed from, copied from the job when it is placed: what a
    # queue holds (its quota, its fair share) is summed from its live allocations alone,
    # through allocation_live_by_queue_team, with no join to executions and jobs.
    queue = models.ForeignKey(
        "resources.Queue", on_delete=models.PROTECT, related_name="allocations", db_index=False
    )
    # The job's team, copied alike: what a team holds in a queue orders the teams there
    # (fair share within a queue), summed through the same index.
    team = models.ForeignKey(
        "accounts.Team", on_delete=models.PROTECT, related_name="allocations", db_index=False
    )
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
            # Used by GET /api/allocations/, newest first, and its status filter.
            models.Index(fields=["status", "-created_at"], name="allocation_status_created"),
            # Used by GET /api/allocations/?node=...
            models.Index(fields=["node", "-created_at"], name="allocation_node_created"),
            # Used by GET /api/allocations/ for a team's members, and its team and queue
            # filters (and by the PROTECT checks of a team's or queue's deletion).
            models.Index(fields=["team", "-created_at"], name="allocation_team_created"),
            models.Index(fields=["queue", "-created_at"], name="allocation_queue_created"),
            # Used by the usage figures and the consistency checks: live allocations per node.
            models.Index(
                fields=["node", "status"],
                name="allocation_live_by_node",
                condition=Q(status__in=LIVE_ALLOCATION_STATUSES),
            ),
            # What each queue, and each team in it, holds, read by every placement, from
            # its amounts alone.
            models.Index(
                fields=["queue", "team"],
                include=["cpu_millis", "memory_mb", "gpu"],
                name="allocation_live_by_queue_team",
                condition=Q(status__in=LIVE_ALLOCATION_STATUSES),
            ),
        ]

    def __str__(self):
        return f"{self.execution_id} on {self.node_id} ({self.status})"
