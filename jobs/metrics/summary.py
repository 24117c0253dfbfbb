"""`GET /api/metrics/summary/`: the figures of `/metrics` as JSON, through the caller's
teams. A member sees the queues their teams may use and, in them, their teams' jobs
only; staff see every queue and every job. Nodes are everyone's to see, as in
`/api/nodes/`. A fixed number of statements, whatever the size of the cluster.
"""

from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from accounts.models import User
from accounts.selectors import team_list_visible
from nodes.models import Node, NodeStatus
from resources.selectors import queue_list_visible

from ..models import ExecutionStatus, Job
from ..services.metrics_tallies import RUN_SECONDS
from .figures import (
    ENDED_EXECUTION_STATUSES,
    LIVE_JOB_STATUSES,
    NODE_COLUMNS,
    PENDING_REASON_LABELS,
    dead_letter_counts,
    live_jobs,
)

WINDOW = timedelta(hours=1)
FAILED = (ExecutionStatus.FAILED, ExecutionStatus.LOST)

# Attempts that ended in the window, per queue and outcome, and per queue (its
# GROUPING row) the median and 95th percentile of how long those that started ran.
# Both windows read the executions through their index on `finished_at`.
ENDED_SQL = f"""
SELECT j.queue_id, e.status, GROUPING(e.status), count(*),
       percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY {RUN_SECONDS})
  FROM jobs_jobexecution e JOIN jobs_job j ON j.id = e.job_id
 WHERE e.finished_at >= %(since)s AND e.status = ANY(%(ended)s)
   AND j.queue_id = ANY(%(queues)s)
   AND (%(teams)s::bigint[] IS NULL OR j.team_id = ANY(%(teams)s::bigint[]))
 GROUP BY GROUPING SETS ((j.queue_id, e.status), (j.queue_id))
"""

# Jobs whose first attempt to start did so in the window: how many, and the median and
# 95th percentile of their submission to that start. An attempt that started in the
# window has ended in it or not at all, which the index on `finished_at` finds.
STARTED_SQL = """
SELECT j.queue_id, count(*),
       percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (
           ORDER BY greatest(date_part('epoch', first.started_at - j.created_at), 0))
  FROM (SELECT job_id, min(started_at) AS started_at FROM jobs_jobexecution
         WHERE job_id IN (SELECT job_id FROM jobs_jobexecution
                           WHERE started_at >= %(since)s
                             AND (finished_at >= %(since)s OR finished_at IS NULL))
         GROUP BY job_id HAVING min(started_at) >= %(since)s) AS first
  JOIN jobs_job j ON j.id = first.job_id
 WHERE j.queue_id = ANY(%(queues)s)
   AND (%(teams)s::bigint[] IS NULL OR j.team_id = ANY(%(teams)s::bigint[]))
 GROUP BY j.queue_id
"""


def _rows(sql: str, params: dict) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _percentiles(values: list[float] | None) -> dict:
    p50, p95 = values if values else (None, None)
    return {"p50": p50, "p95": p95}


def metrics_summary(*, user: User) -> dict:
    now = timezone.now()
    queues = list(queue_list_visible(user=user).order_by("name").values_list("id", "name"))
    queue_ids = [queue_id for queue_id, _ in queues]
    jobs = Job.objects.filter(queue_id__in=queue_ids)
    team_ids = None
    if not user.is_staff:
        team_ids = list(team_list_visible(user=user).values_list("pk", flat=True))
        jobs = jobs.filter(team_id__in=team_ids)
    live = live_jobs(jobs=jobs, now=now)
    dead_letter = dead_letter_counts(jobs=jobs)
    params = {
        "since": now - WINDOW,
        "ended": list(ENDED_EXECUTION_STATUSES),
        "queues": queue_ids,
        "teams": team_ids,
    }
    ended, ran = {}, {}
    for queue_id, status, rollup, count, percentiles in _rows(ENDED_SQL, params):
        if rollup:
            ran[queue_id] = percentiles
        else:
            ended[queue_id, status] = count
    started = {queue_id: (n, p) for queue_id, n, p in _rows(STARTED_SQL, params)}

    summaries = []
    for queue_id, name in queues:
        finished = {
            str(outcome): ended.get((queue_id, outcome), 0) for outcome in ENDED_EXECUTION_STATUSES
        }
        failed = sum(finished[str(outcome)] for outcome in FAILED)
        judged = failed + finished[str(ExecutionStatus.SUCCEEDED)]  # cancelled ones say nothing
        n_started, waits = started.get(queue_id, (0, None))
        summaries.append(
            {
                "queue": name,
                "jobs": {
                    str(status): live.counts[queue_id, status] for status in LIVE_JOB_STATUSES
                },
                "pending_reasons": {
                    reason: live.reasons[queue_id, reason] for reason in PENDING_REASON_LABELS
                },
                "oldest_pending_age_seconds": live.oldest_age_seconds(queue_id),
                "dead_letter": dead_letter.get(queue_id, 0),
                "last_hour": {
                    "started": n_started,
                    "wait_seconds": _percentiles(waits),
                    "finished": finished,
                    "run_seconds": _percentiles(ran.get(queue_id)),
                    "failure_ratio": failed / judged if judged else None,
                },
            }
        )
    return {
        "window_seconds": int(WINDOW.total_seconds()),
        "queues": summaries,
        **_nodes(now),
    }


def _nodes(now) -> dict:
    """Every node, and the cluster's totals over the nodes that are not offline (used:
    over those whose agents said, None when none did)."""
    recent = now - timedelta(seconds=settings.NODE_LOST_AFTER_SECONDS)
    nodes, up_count = [], 0
    total = {"capacity": [0, 0, 0], "allocated": [0, 0, 0], "used": [None, None]}
    for name, status, beat, *amounts in Node.objects.order_by("name").values_list(*NODE_COLUMNS):
        offline = status == NodeStatus.OFFLINE
        up = not offline and beat is not None and beat >= recent
        up_count += up
        capacity, allocated = amounts[0:3], amounts[3:6]
        # An offline node's last figures are stale: it is not using anything it said.
        used = (None, None) if offline else amounts[6:8]
        if not offline:
            for kind, values in (("capacity", capacity), ("allocated", allocated), ("used", used)):
                total[kind] = [_add(t, v) for t, v in zip(total[kind], values, strict=True)]
        nodes.append(
            {
                "name": name,
                "status": status,
                "up": up,
                "capacity": _amounts(*capacity),
                "allocated": _amounts(*allocated),
                "used": _used(*used),
            }
        )
    return {
        "cluster": {
            "nodes": len(nodes),
            "nodes_up": up_count,
            "capacity": _amounts(*total["capacity"]),
            "allocated": _amounts(*total["allocated"]),
            "used": _used(*total["used"]),
        },
        "nodes": nodes,
    }


def _add(total: int | None, amount: int | None) -> int | None:
    return total if amount is None else (total or 0) + amount


def _amounts(cpu_millis: int, memory_mb: int, gpu: int) -> dict:
    return {"cpu": cpu_millis / 1000, "memory_mb": memory_mb, "gpu": gpu}


def _used(cpu_millis: int | None, memory_mb: int | None) -> dict:
    return {"cpu": None if cpu_millis is None else cpu_millis / 1000, "memory_mb": memory_mb}
