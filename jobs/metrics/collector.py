"""The cluster's Prometheus metrics, read from PostgreSQL at each scrape.

Every web worker answers the same, since nothing is kept in the process: a fixed number
of aggregate statements, whatever the number of jobs, nodes or queues. Counters are
counted from rows that never change back, so they only grow (unless jobs are deleted
with their team):

- `scheduler_jobs_finished_total` and `scheduler_job_run_seconds`: attempts (executions)
  that ended, by outcome. An ended execution never un-ends, whereas a failed job that
  is requeued leaves `failed`.
- `scheduler_job_wait_seconds`: per job that started, its creation to its first
  attempt's start, so its count is the number of jobs started.
- `scheduler_placements_total`: executions ever created.
- `scheduler_retries_total`: `JobRetry` rows; `scheduler_nodes_lost_total`: `NodeLoss`
  rows; `scheduler_schedule_*`: `JobScheduleRun` rows (fired time minus due time).

Histograms are bucket counts computed in SQL (one `count(*) FILTER` per bucket).
Labels are names of queues and nodes, statuses and reasons: never a job.
"""

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Count, F, Min, Q, QuerySet, Sum
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from nodes.models import Node, NodeStatus
from resources.models import LIVE_ALLOCATION_STATUSES, Allocation, Queue

from ..models import (
    ExecutionStatus,
    Job,
    JobRetry,
    JobStatus,
    PendingReason,
    ScheduleRunOutcome,
)
from ..scheduling.leader import LEADER_LOCK_ID

LIVE_JOB_STATUSES = (JobStatus.PENDING, JobStatus.RESERVED, JobStatus.RUNNING)
ENDED_EXECUTION_STATUSES = (
    ExecutionStatus.SUCCEEDED,
    ExecutionStatus.FAILED,
    ExecutionStatus.CANCELLED,
    ExecutionStatus.LOST,
)
# A pending job no cycle has looked at yet has no reason stored; a label needs a name.
WAITING_SCHEDULER = "waiting_scheduler"


def reason_label(reason: str) -> str:
    return reason or WAITING_SCHEDULER


PENDING_REASON_LABELS = tuple(reason_label(reason) for reason in PendingReason.values)

# Seconds. A job waits milliseconds on free room, and hours in a backlog.
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
RUN_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400)
LATENESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

MB = 1024 * 1024


def _buckets(expression: str, bounds: Sequence[float]) -> str:
    """Cumulative bucket counts of `expression`, one column per bound (+Inf is count)."""
    return ", ".join(f"count(*) FILTER (WHERE {expression} <= {float(b)!r})" for b in bounds)


# How long an execution ran, from start to end; null unless it did both. Clamped at 0
# against clock skew between the hosts that wrote the two times (and after the null
# check: greatest() ignores nulls).
RUN_SECONDS = """CASE WHEN e.started_at IS NOT NULL AND e.finished_at IS NOT NULL
               THEN greatest(date_part('epoch', e.finished_at - e.started_at), 0) END"""

# Every execution by its job's queue and its status, and how long the ended ones ran.
# Their total is the placements ever made.
EXECUTIONS_SQL = f"""
SELECT queue_id, status, count(*), count(run), coalesce(sum(run), 0), {_buckets("run", RUN_BUCKETS)}
  FROM (SELECT j.queue_id, e.status, {RUN_SECONDS} AS run
          FROM jobs_jobexecution e JOIN jobs_job j ON j.id = e.job_id) AS execution
 GROUP BY queue_id, status
"""

# Per job that started: from its creation to the start of its first attempt that started.
WAITS_SQL = f"""
SELECT queue_id, count(*), coalesce(sum(wait), 0), {_buckets("wait", WAIT_BUCKETS)}
  FROM (SELECT j.queue_id,
               greatest(date_part('epoch', first.started_at - j.created_at), 0) AS wait
          FROM (SELECT job_id, min(started_at) AS started_at FROM jobs_jobexecution
                 WHERE started_at IS NOT NULL GROUP BY job_id) AS first
          JOIN jobs_job j ON j.id = first.job_id) AS started
 GROUP BY queue_id
"""

SCHEDULE_RUNS_SQL = f"""
SELECT outcome, count(*), coalesce(sum(late), 0), {_buckets("late", LATENESS_BUCKETS)}
  FROM (SELECT outcome, greatest(date_part('epoch', fired_at - due_at), 0) AS late
          FROM jobs_jobschedulerun) AS run
 GROUP BY outcome
"""

# Whether some session holds the scheduler's leader lock in this database (a bigint
# advisory lock shows as classid = high half, objid = low half, objsubid = 1).
SCALARS_SQL = """
SELECT (SELECT count(*) FROM nodes_nodeloss),
       EXISTS (SELECT 1 FROM pg_locks
                WHERE locktype = 'advisory' AND granted AND objsubid = 1
                  AND classid = %(lock_high)s AND objid = %(lock_low)s
                  AND database = (SELECT oid FROM pg_database
                                   WHERE datname = current_database()))
"""


@dataclass
class LiveJobs:
    """Jobs not yet ended, per queue id: by status, pending ones by reason label, and
    since when the longest-waiting due one has been due."""

    now: datetime
    counts: dict = field(default_factory=lambda: defaultdict(int))  # (queue, status)
    reasons: dict = field(default_factory=lambda: defaultdict(int))  # (queue, reason label)
    due_since: dict = field(default_factory=dict)  # queue -> datetime

    def oldest_age_seconds(self, queue_id: int) -> float | None:
        since = self.due_since.get(queue_id)
        return None if since is None else max((self.now - since).total_seconds(), 0.0)


def live_jobs(*, jobs: QuerySet[Job], now) -> LiveJobs:
    """`jobs` not yet ended, counted in one statement (served by the job_status_created
    index: the live statuses are a small part of all jobs)."""
    due = Q(status=JobStatus.PENDING) & (Q(not_before__isnull=True) | Q(not_before__lte=now))
    rows = (
        jobs.filter(status__in=LIVE_JOB_STATUSES)
        .values_list("queue_id", "status", "pending_reason")
        .annotate(
            n=Count("id"),
            due_since=Min(Greatest("created_at", Coalesce("not_before", "created_at")), filter=due),
        )
        .order_by()
    )
    live = LiveJobs(now=now)
    for queue_id, status, reason, n, due_since in rows:
        live.counts[queue_id, status] += n
        if status == JobStatus.PENDING:
            live.reasons[queue_id, reason_label(reason)] += n
        if due_since is not None:
            live.due_since[queue_id] = min(live.due_since.get(queue_id, due_since), due_since)
    return live


def _rows(sql: str, params: dict | None = None) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _histogram(name: str, doc: str, labels: list[str], bounds: Sequence[float]):
    family = HistogramMetricFamily(name, doc, labels=labels)

    def add(values: Sequence[str], row: Sequence | None) -> None:
        """`row`: count, sum, then the cumulative count at each bound (None: all zero)."""
        count, total, *cumulative = row if row is not None else (0, 0.0, *[0] * len(bounds))
        buckets = [(repr(float(b)), c) for b, c in zip(bounds, cumulative, strict=True)]
        family.add_metric(values, [*buckets, ("+Inf", count)], float(total))

    return family, add


class ClusterCollector:
    """A prometheus_client collector of the cluster's state, read at each scrape."""

    def describe(self) -> list:
        # Registering must not query the database; nothing here clashes by name.
        return []

    def collect(self) -> Iterable[Metric]:
        now = timezone.now()
        queues = {
            queue_id: (name, quotas)
            for queue_id, name, *quotas in Queue.objects.order_by("name").values_list(
                "id", "name", "quota_cpu_millis", "quota_memory_mb", "quota_gpu"
            )
        }
        yield from self.jobs(queues, now)
        yield from self.executions(queues)
        yield from self.queues(queues)
        yield from self.nodes(now)
        yield from self.schedules()
        yield from self.scalars()

    def jobs(self, queues: dict, now) -> Iterable[Metric]:
        by_status = GaugeMetricFamily(
            "scheduler_jobs", "Jobs not yet ended, by status.", labels=["queue", "status"]
        )
        by_reason = GaugeMetricFamily(
            "scheduler_pending_jobs",
            f"Pending jobs by why they wait ({WAITING_SCHEDULER}: no cycle has looked at "
            "them yet).",
            labels=["queue", "reason"],
        )
        oldest = GaugeMetricFamily(
            "scheduler_oldest_pending_job_age_seconds",
            "How long the longest-waiting pending job that is due has waited since it became "
            "due (its creation, or its not_before or retry time if later); 0 when none.",
            labels=["queue"],
        )
        live = live_jobs(jobs=Job.objects.all(), now=now)
        for queue_id, (name, _) in queues.items():
            for status in LIVE_JOB_STATUSES:
                by_status.add_metric([name, status], live.counts[queue_id, status])
            for reason in PENDING_REASON_LABELS:
                by_reason.add_metric([name, reason], live.reasons[queue_id, reason])
            oldest.add_metric([name], live.oldest_age_seconds(queue_id) or 0.0)
        yield from (by_status, by_reason, oldest)

    def executions(self, queues: dict) -> Iterable[Metric]:
        finished = CounterMetricFamily(
            "scheduler_jobs_finished",
            "Attempts (executions) that ended, by outcome: a job retried twice counts three.",
            labels=["queue", "outcome"],
        )
        run, add_run = _histogram(
            "scheduler_job_run_seconds",
            "How long ended attempts ran, from their start to their end (attempts lost "
            "before they started are not here).",
            ["queue", "outcome"],
            RUN_BUCKETS,
        )
        wait, add_wait = _histogram(
            "scheduler_job_wait_seconds",
            "Per job that started: from its submission to the start of its first attempt.",
            ["queue"],
            WAIT_BUCKETS,
        )
        ended, placements = {}, 0
        for queue_id, status, total, *ran in _rows(EXECUTIONS_SQL):
            placements += total
            if status in ENDED_EXECUTION_STATUSES:
                ended[queue_id, status] = (total, ran)
        waits = {queue_id: row for queue_id, *row in _rows(WAITS_SQL)}
        for queue_id, (name, _) in queues.items():
            for outcome in ENDED_EXECUTION_STATUSES:
                total, ran = ended.get((queue_id, outcome), (0, None))
                finished.add_metric([name, outcome], total)
                add_run([name, outcome], ran)
            add_wait([name], waits.get(queue_id))
        yield from (finished, run, wait)
        yield CounterMetricFamily(
            "scheduler_placements", "Executions the scheduler ever created.", value=placements
        )

    def queues(self, queues: dict) -> Iterable[Metric]:
        allocated = GaugeMetricFamily(
            "scheduler_queue_allocated",
            "What the queue's live allocations hold: cpu in cores, memory in bytes, gpu.",
            labels=["queue", "resource"],
        )
        quota = GaugeMetricFamily(
            "scheduler_queue_quota",
            "The most the queue's jobs may hold at once, where a quota is set.",
            labels=["queue", "resource"],
        )
        dead = GaugeMetricFamily(
            "scheduler_dead_letter_jobs",
            "Failed jobs neither requeued nor acknowledged.",
            labels=["queue"],
        )
        retries = CounterMetricFamily(
            "scheduler_retries", "Retries planned (automatic and by hand).", labels=["queue"]
        )
        held = {
            row[0]: row[1:]
            for row in Allocation.objects.filter(status__in=LIVE_ALLOCATION_STATUSES)
            .values_list(F("execution__job__queue_id"))
            .annotate(Sum("cpu_millis"), Sum("memory_mb"), Sum("gpu"))
            .order_by()
        }
        dead_letter = dict(
            Job.objects.dead_letter().values_list("queue_id").annotate(Count("id")).order_by()
        )
        retried = dict(
            JobRetry.objects.values_list(F("job__queue_id")).annotate(Count("id")).order_by()
        )
        for queue_id, (name, quotas) in queues.items():
            for resource, value in zip(
                ("cpu", "memory", "gpu"), held.get(queue_id, (0, 0, 0)), strict=True
            ):
                allocated.add_metric([name, resource], _base_units(resource, value))
            for resource, value in zip(("cpu", "memory", "gpu"), quotas, strict=True):
                if value is not None:
                    quota.add_metric([name, resource], _base_units(resource, value))
            dead.add_metric([name], dead_letter.get(queue_id, 0))
            retries.add_metric([name], retried.get(queue_id, 0))
        yield from (allocated, quota, dead, retries)

    def nodes(self, now) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "scheduler_node_up",
            "1 when the node is ready, cordoned or draining and its agent heartbeat within "
            "NODE_LOST_AFTER_SECONDS; 0 otherwise (offline, or silent).",
            labels=["node"],
        )
        kinds = {
            "capacity": "What the node offers: cpu in cores, memory in bytes, gpu.",
            "allocated": "What the node's live allocations hold: cpu in cores, memory in "
            "bytes, gpu.",
            "used": "What the node's jobs really used at its last heartbeat, as its agent "
            "sampled it: cpu in CPU seconds per second, memory in resident bytes (none for "
            "offline nodes, or agents that do not say).",
        }
        families = {
            kind: GaugeMetricFamily(f"scheduler_node_{kind}", doc, labels=["node", "resource"])
            for kind, doc in kinds.items()
        }
        recent = now - timedelta(seconds=settings.NODE_LOST_AFTER_SECONDS)
        for name, status, beat, *amounts in Node.objects.values_list(
            "name",
            "status",
            "last_heartbeat",
            "cpu_millis",
            "memory_mb",
            "gpu",
            "allocated_cpu_millis",
            "allocated_memory_mb",
            "allocated_gpu",
            "used_cpu_millis",
            "used_memory_mb",
        ).order_by("name"):
            alive = status != NodeStatus.OFFLINE and beat is not None and beat >= recent
            up.add_metric([name], 1 if alive else 0)
            capacity, allocated, used = amounts[0:3], amounts[3:6], amounts[6:8]
            for resource, c, a in zip(("cpu", "memory", "gpu"), capacity, allocated, strict=True):
                families["capacity"].add_metric([name, resource], _base_units(resource, c))
                families["allocated"].add_metric([name, resource], _base_units(resource, a))
            if status != NodeStatus.OFFLINE:
                for resource, u in zip(("cpu", "memory"), used, strict=True):
                    if u is not None:
                        families["used"].add_metric([name, resource], _base_units(resource, u))
        yield up
        yield from families.values()

    def schedules(self) -> Iterable[Metric]:
        runs = CounterMetricFamily(
            "scheduler_schedule_runs",
            "What schedules did at their due times, by outcome.",
            labels=["outcome"],
        )
        lateness, add_lateness = _histogram(
            "scheduler_schedule_lateness_seconds",
            "How late schedules fired: fired time minus due time, every outcome.",
            [],
            LATENESS_BUCKETS,
        )
        by_outcome = {outcome: row for outcome, *row in _rows(SCHEDULE_RUNS_SQL)}
        for outcome in ScheduleRunOutcome.values:
            runs.add_metric([outcome], by_outcome[outcome][0] if outcome in by_outcome else 0)
        # The histogram of every outcome: sums of the per-outcome rows, column by column.
        columns = [sum(values) for values in zip(*by_outcome.values(), strict=True)]
        add_lateness([], columns or None)
        yield from (runs, lateness)

    def scalars(self) -> Iterable[Metric]:
        [(lost, leader)] = _rows(
            SCALARS_SQL,
            {"lock_high": LEADER_LOCK_ID >> 32, "lock_low": LEADER_LOCK_ID & 0xFFFFFFFF},
        )
        yield CounterMetricFamily(
            "scheduler_nodes_lost",
            "Times a node went offline because its agent fell silent.",
            value=lost,
        )
        yield GaugeMetricFamily(
            "scheduler_leader",
            "1 while some scheduler holds the leader lock, 0 when none leads.",
            value=1 if leader else 0,
        )


def _base_units(resource: str, amount: int) -> float:
    """A stored amount (CPU in thousandths of a core, memory in MB) in Prometheus's base
    units: cores and bytes."""
    if resource == "cpu":
        return amount / 1000
    if resource == "memory":
        return amount * MB
    return amount
