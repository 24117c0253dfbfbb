"""Reads for resources: queues a team or user may use, allocations, and usage figures."""

from django.db import connection
from django.db.models import Exists, OuterRef, Q, QuerySet, Sum

from accounts.models import Team, User
from accounts.selectors import team_list_visible
from common.db import prepared_cursor
from nodes.models import Node, NodeStatus

from .models import LIVE_ALLOCATION_STATUSES, Allocation, Queue
from .placement import Resources, dominant_share


def queue_list_for_team(*, team: Team) -> QuerySet[Queue]:
    """The queues `team` may submit into."""
    listed = Queue.teams.through.objects.filter(queue_id=OuterRef("pk"), team_id=team.pk)
    return Queue.objects.filter(Q(all_teams=True) | Exists(listed))


# queue_list_for_team's rule for one queue by name, in one prepared statement, with
# whether any registered node could hold a request: what every submission asks. Plain
# SQL because it is on every submission's path: the same query through the ORM costs
# 1.3 ms of Python per call against 0.2 ms, and bench/throughput.py fell from about 310
# to 190 jobs/s with it (its submitting threads share one interpreter).
_QUEUE_COLUMNS = [f.attname for f in Queue._meta.concrete_fields]
_QUEUE_FOR_SUBMISSION_SQL = f"""
SELECT {", ".join(f"q.{column}" for column in _QUEUE_COLUMNS)},
       EXISTS (SELECT 1 FROM nodes_node n
                WHERE n.cpu_millis >= %(cpu)s AND n.memory_mb >= %(memory)s AND n.gpu >= %(gpu)s)
  FROM resources_queue q
 WHERE q.name = %(name)s
   AND (q.all_teams OR EXISTS (SELECT 1 FROM resources_queue_teams t
                                WHERE t.queue_id = q.id AND t.team_id = %(team)s))
"""  # noqa: S608 (the model's column names)


def queue_for_submission(
    *, team: Team, name: str, cpu_millis: int, memory_mb: int, gpu: int
) -> tuple[Queue | None, bool]:
    """The queue `name` if `team` may submit into it (None otherwise), and whether any
    registered node, empty, could hold the request. The submission path's one read."""
    with prepared_cursor() as cursor:
        cursor.execute(
            _QUEUE_FOR_SUBMISSION_SQL,
            {"name": name, "team": team.pk, "cpu": cpu_millis, "memory": memory_mb, "gpu": gpu},
        )
        row = cursor.fetchone()
    if row is None:
        return None, False
    return Queue.from_db(connection.alias, _QUEUE_COLUMNS, row[:-1]), row[-1]


def queue_list_visible(*, user: User) -> QuerySet[Queue]:
    """Staff see every queue; others the queues one of their teams may submit into."""
    if user.is_staff:
        return Queue.objects.all()
    listed = Queue.teams.through.objects.filter(
        queue_id=OuterRef("pk"), team__memberships__user=user
    )
    return Queue.objects.filter(Q(all_teams=True) | Exists(listed))


def allocation_node_name(*, token: str) -> str | None:
    return (
        Allocation.objects.filter(execution__token=token, status__in=LIVE_ALLOCATION_STATUSES)
        .values_list("node__name", flat=True)
        .first()
    )


def allocation_list_visible(*, user: User) -> QuerySet[Allocation]:
    """Staff see every allocation; others those of their teams' jobs."""
    allocations = Allocation.objects.select_related("node", "team", "queue", "execution").order_by(
        "-created_at", "-id"
    )
    if user.is_staff:
        return allocations
    # The team ids as values, not a join, as for the jobs list (allocation_team_created).
    return allocations.filter(
        team_id__in=list(team_list_visible(user=user).values_list("pk", flat=True))
    )


def _figures(capacity: Resources, allocated: Resources, free: Resources) -> dict:
    return {
        "capacity": _resources(capacity),
        "allocated": _resources(allocated),
        "free": _resources(free),
    }


def _resources(amounts: Resources) -> dict:
    return {"cpu": amounts.cpu_millis / 1000, "memory_mb": amounts.memory_mb, "gpu": amounts.gpu}


def _minus(a: Resources, b: Resources) -> Resources:
    return Resources(a.cpu_millis - b.cpu_millis, a.memory_mb - b.memory_mb, a.gpu - b.gpu)


def _at_least_zero_and_at_most(amounts: Resources, ceiling: Resources) -> Resources:
    return Resources(
        *(
            max(0, min(value, top))
            for value, top in zip(
                (amounts.cpu_millis, amounts.memory_mb, amounts.gpu),
                (ceiling.cpu_millis, ceiling.memory_mb, ceiling.gpu),
                strict=True,
            )
        )
    )


def _queue_capacity(queue: Queue, cluster: Resources) -> Resources:
    """What the queue may hold at most: its quota, or the cluster where it has none."""
    return Resources(
        *(
            total if quota is None else min(quota, total)
            for quota, total in (
                (queue.quota_cpu_millis, cluster.cpu_millis),
                (queue.quota_memory_mb, cluster.memory_mb),
                (queue.quota_gpu, cluster.gpu),
            )
        )
    )


def usage_summary(*, user: User) -> dict:
    """Capacity, allocated and free for the cluster, each node, and the teams and queues
    the user may see. Six queries whatever the size of the cluster.

    - cluster: capacity of the nodes that are not offline; what is allocated on all
      nodes; free is what new work can still get, on ready nodes.
    - a node: its capacity, what its live allocations hold, and the difference.
    - a queue: capacity is its quota (the cluster's where it has none); allocated is what
      its jobs hold; free is what it may still take now, within the cluster's free room.
    - a team: capacity is what the queues it may use allow together, at most the
      cluster; allocated is what its jobs hold; free as for a queue.
    """
    nodes = list(Node.objects.order_by("name"))
    cluster = sum(
        (
            Resources(n.cpu_millis, n.memory_mb, n.gpu)
            for n in nodes
            if n.status != NodeStatus.OFFLINE
        ),
        Resources(),
    )
    allocated = sum(
        (Resources(n.allocated_cpu_millis, n.allocated_memory_mb, n.allocated_gpu) for n in nodes),
        Resources(),
    )
    cluster_free = sum(
        (
            Resources(n.free_cpu_millis, n.free_memory_mb, n.free_gpu)
            for n in nodes
            if n.status == NodeStatus.READY
        ),
        Resources(),
    )

    held = (
        Allocation.objects.filter(status__in=LIVE_ALLOCATION_STATUSES)
        .values("queue", "team")
        .annotate(cpu=Sum("cpu_millis"), memory=Sum("memory_mb"), gpu=Sum("gpu"))
        .order_by()
    )
    by_queue: dict[int, Resources] = {}
    by_team: dict[int, Resources] = {}
    for row in held:
        amounts = Resources(row["cpu"], row["memory"], row["gpu"])
        by_queue[row["queue"]] = by_queue.get(row["queue"], Resources()) + amounts
        by_team[row["team"]] = by_team.get(row["team"], Resources()) + amounts

    all_queues = list(Queue.objects.prefetch_related("teams"))
    visible_queue_ids = set(queue_list_visible(user=user).values_list("id", flat=True))
    queues = []
    for queue in all_queues:
        if queue.id not in visible_queue_ids:
            continue
        capacity = _queue_capacity(queue, cluster)
        used = by_queue.get(queue.id, Resources())
        free = _at_least_zero_and_at_most(_minus(capacity, used), cluster_free)
        queues.append(
            {
                "queue": queue.name,
                "weight": queue.weight,
                "priority": queue.priority,
                "dominant_share": float(dominant_share(used, cluster)),
                "past_share": queue.past_share,
                **_figures(capacity, used, free),
            }
        )

    teams = []
    for team in team_list_visible(user=user).order_by("name"):
        usable = [q for q in all_queues if q.all_teams or team in q.teams.all()]
        reach = Resources()
        for queue in usable:
            reach += _queue_capacity(queue, cluster)
        capacity = _at_least_zero_and_at_most(reach, cluster)
        used = by_team.get(team.id, Resources())
        free = _at_least_zero_and_at_most(_minus(capacity, used), cluster_free)
        teams.append(
            {
                "team": team.slug,
                "fair_share_weight": team.fair_share_weight,
                "past_share": team.past_share,
                **_figures(capacity, used, free),
            }
        )

    return {
        "cluster": {"nodes": len(nodes), **_figures(cluster, allocated, cluster_free)},
        "nodes": [
            {
                "name": n.name,
                "status": n.status,
                **_figures(
                    Resources(n.cpu_millis, n.memory_mb, n.gpu),
                    Resources(n.allocated_cpu_millis, n.allocated_memory_mb, n.allocated_gpu),
                    Resources(n.free_cpu_millis, n.free_memory_mb, n.free_gpu),
                ),
            }
            for n in nodes
        ],
        "queues": queues,
        "teams": teams,
    }


def queue_allocated(*, queue: Queue) -> Resources:
    """What the queue's jobs hold now: the sum of their live allocations. One query."""
    held = Allocation.objects.filter(status__in=LIVE_ALLOCATION_STATUSES, queue=queue).aggregate(
        cpu=Sum("cpu_millis"), memory=Sum("memory_mb"), gpu=Sum("gpu")
    )
    return Resources(held["cpu"] or 0, held["memory"] or 0, held["gpu"] or 0)
