"""The cluster's Prometheus metrics, read from PostgreSQL at each scrape.

Every web worker answers the same, since nothing is kept in the process: a fixed number
of aggregate statements (`figures`), whatever the number of jobs, nodes or queues, in
one transaction. Gauges and counters are given for every queue (or node) and
label value, 0 where there is nothing, so an alert on a rate sees a series from its
start. Labels are names of queues and nodes, statuses and reasons: never a job.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from accounts.models import Team
from common.db import without_jit
from nodes.models import Node, NodeStatus
from resources.models import Queue

from ..models import ExecutionStatus, Job, ScheduleRunOutcome
from .figures import (
    ENDED_EXECUTION_STATUSES,
    LATENESS_BUCKETS,
    LIVE_JOB_STATUSES,
    NODE_COLUMNS,
    PENDING_REASON_LABELS,
    RUN_BUCKETS,
    WAIT_BUCKETS,
    WAITING_NOT_BEFORE,
    WAITING_SCHEDULER,
    ExecutionFigures,
    LiveJobs,
    Observations,
    dead_letter_counts,
    execution_figures,
    live_jobs,
    nodes_lost_and_leader,
    retry_counts,
    schedule_run_figures,
)

MB = 1024 * 1024
RESOURCES = ("cpu", "memory", "gpu")


@dataclass
class ClusterFigures:
    now: object
    queues: dict  # id -> (name, (quota cpu millis, memory MB, gpu), past share)
    live: LiveJobs
    executions: ExecutionFigures
    dead_letter: dict
    retries: dict
    nodes: list
    schedule_runs: dict
    lateness: Observations
    nodes_lost: int
    leader: bool
    team_past_shares: list  # (team slug, past share)


def read_cluster_figures() -> ClusterFigures:
    now = timezone.now()
    with transaction.atomic():
        without_jit()
        queues = {
            queue_id: (name, quotas, past_share)
            for queue_id, name, past_share, *quotas in Queue.objects.order_by("name").values_list(
                "id", "name", "past_share", "quota_cpu_millis", "quota_memory_mb", "quota_gpu"
            )
        }
        runs, lateness = schedule_run_figures()
        lost, leader = nodes_lost_and_leader()
        return ClusterFigures(
            now=now,
            queues=queues,
            live=live_jobs(jobs=Job.objects.all(), now=now),
            executions=execution_figures(),
            dead_letter=dead_letter_counts(jobs=Job.objects.all()),
            retries=retry_counts(),
            nodes=list(Node.objects.order_by("name").values_list(*NODE_COLUMNS)),
            schedule_runs=runs,
            lateness=lateness,
            nodes_lost=lost,
            leader=leader,
            team_past_shares=list(Team.objects.order_by("slug").values_list("slug", "past_share")),
        )


class ClusterCollector:
    """A prometheus_client collector of the cluster's state, read at each scrape."""

    def describe(self) -> list:
        # Registering must not query the database; nothing here clashes by name.
        return []

    def collect(self) -> Iterable[Metric]:
        figures = read_cluster_figures()
        yield from jobs(figures)
        yield from executions(figures)
        yield from queues(figures)
        yield from teams(figures)
        yield from nodes(figures)
        yield from schedules(figures)
        yield CounterMetricFamily(
            "scheduler_nodes_lost",
            "Times a node went offline because its agent fell silent.",
            value=figures.nodes_lost,
        )
        yield GaugeMetricFamily(
            "scheduler_leader",
            "1 while some scheduler holds the leader lock, 0 when none leads.",
            value=1 if figures.leader else 0,
        )


def jobs(figures: ClusterFigures) -> Iterable[Metric]:
    by_status = GaugeMetricFamily(
        "scheduler_jobs", "Jobs not yet ended, by status.", labels=["queue", "status"]
    )
    by_reason = GaugeMetricFamily(
        "scheduler_pending_jobs",
        f"Pending jobs by why they wait ({WAITING_SCHEDULER}: no cycle has looked at them yet; "
        f"{WAITING_NOT_BEFORE}: their not_before has not come).",
        labels=["queue", "reason"],
    )
    oldest = GaugeMetricFamily(
        "scheduler_oldest_pending_job_age_seconds",
        "How long the longest-waiting pending job that is due has waited since it became "
        "due (its creation, or its not_before or retry time if later); 0 when none.",
        labels=["queue"],
    )
    live = figures.live
    for queue_id, (name, *_) in figures.queues.items():
        for status in LIVE_JOB_STATUSES:
            by_status.add_metric([name, status], live.counts[queue_id, status])
        for reason in PENDING_REASON_LABELS:
            by_reason.add_metric([name, reason], live.reasons[queue_id, reason])
        oldest.add_metric([name], live.oldest_age_seconds(queue_id) or 0.0)
    return by_status, by_reason, oldest


def _histogram(name: str, doc: str, labels: list[str], bounds: Sequence[float]):
    family = HistogramMetricFamily(name, doc, labels=labels)

    def add(values: list[str], observed: Observations | None) -> None:
        observed = observed or Observations()
        family.add_metric(values, observed.buckets(bounds), observed.total)

    return family, add


def executions(figures: ClusterFigures) -> Iterable[Metric]:
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
    preemptions = CounterMetricFamily(
        "scheduler_preemptions",
        "Attempts stopped to make room for higher-priority work (or for a queue reclaiming "
        "its share), by the queue of the preempted job.",
        labels=["queue"],
    )
    seen = figures.executions
    for queue_id, (name, *_) in figures.queues.items():
        for outcome in ENDED_EXECUTION_STATUSES:
            finished.add_metric([name, outcome], seen.finished.get((queue_id, outcome), 0))
            add_run([name, outcome], seen.runs.get((queue_id, outcome)))
        add_wait([name], seen.waits.get(queue_id))
        preempted = seen.finished.get((queue_id, ExecutionStatus.PREEMPTED), 0)
        preemptions.add_metric([name], preempted)
    placements = CounterMetricFamily(
        "scheduler_placements", "Executions the scheduler ever created.", value=seen.placements
    )
    return finished, run, wait, placements, preemptions


def queues(figures: ClusterFigures) -> Iterable[Metric]:
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
    past = GaugeMetricFamily(
        "scheduler_queue_past_share",
        "What the queue used over the last days, as a share of the cluster, which fair "
        "share adds to what it holds now (0 unless FAIR_SHARE_HALF_LIFE_DAYS is set).",
        labels=["queue"],
    )
    for queue_id, (name, quotas, past_share) in figures.queues.items():
        held = figures.executions.allocated.get(queue_id, (0, 0, 0))
        for resource, amount, limit in zip(RESOURCES, held, quotas, strict=True):
            allocated.add_metric([name, resource], _base_units(resource, amount))
            if limit is not None:
                quota.add_metric([name, resource], _base_units(resource, limit))
        dead.add_metric([name], figures.dead_letter.get(queue_id, 0))
        retries.add_metric([name], figures.retries.get(queue_id, 0))
        past.add_metric([name], past_share)
    return allocated, quota, dead, retries, past


def teams(figures: ClusterFigures) -> Iterable[Metric]:
    past = GaugeMetricFamily(
        "scheduler_team_past_share",
        "What the team's jobs used over the last days, as a share of the cluster, which fair "
        "share between the teams of a queue adds to what they hold there (0 unless "
        "FAIR_SHARE_HALF_LIFE_DAYS is set).",
        labels=["team"],
    )
    for slug, past_share in figures.team_past_shares:
        past.add_metric([slug], past_share)
    return (past,)


def nodes(figures: ClusterFigures) -> Iterable[Metric]:
    up = GaugeMetricFamily(
        "scheduler_node_up",
        "1 when the node is ready, cordoned or draining and its agent heartbeat within "
        "NODE_LOST_AFTER_SECONDS; 0 otherwise (offline, or silent).",
        labels=["node"],
    )
    capacity = GaugeMetricFamily(
        "scheduler_node_capacity",
        "What the node offers: cpu in cores, memory in bytes, gpu (only for nodes with GPUs).",
        labels=["node", "resource"],
    )
    allocated = GaugeMetricFamily(
        "scheduler_node_allocated",
        "What the node's live allocations hold: cpu in cores, memory in bytes, gpu (only "
        "for nodes with GPUs).",
        labels=["node", "resource"],
    )
    used = GaugeMetricFamily(
        "scheduler_node_used",
        "What the node's jobs really used at its last heartbeat, as its agent sampled it: "
        "cpu in CPU seconds per second, memory in resident bytes (none for offline nodes, "
        "or agents that do not say).",
        labels=["node", "resource"],
    )
    recent = figures.now - timedelta(seconds=settings.NODE_LOST_AFTER_SECONDS)
    for name, status, beat, cpu, memory, gpu, *held, used_cpu, used_memory in figures.nodes:
        offline = status == NodeStatus.OFFLINE
        up.add_metric([name], 0 if offline or beat is None or beat < recent else 1)
        capacity.add_metric([name, "cpu"], cpu / 1000)
        capacity.add_metric([name, "memory"], memory * MB)
        allocated.add_metric([name, "cpu"], held[0] / 1000)
        allocated.add_metric([name, "memory"], held[1] * MB)
        # Like kube-state-metrics, a node shows the resources it has: an alert on GPU
        # allocation then divides by GPU nodes only.
        if gpu:
            capacity.add_metric([name, "gpu"], gpu)
            allocated.add_metric([name, "gpu"], held[2])
        if not offline and used_cpu is not None:
            used.add_metric([name, "cpu"], used_cpu / 1000)
        if not offline and used_memory is not None:
            used.add_metric([name, "memory"], used_memory * MB)
    return up, capacity, allocated, used


def schedules(figures: ClusterFigures) -> Iterable[Metric]:
    runs = CounterMetricFamily(
        "scheduler_schedule_runs",
        "What schedules did at their due times, by outcome.",
        labels=["outcome"],
    )
    for outcome in ScheduleRunOutcome.values:
        runs.add_metric([outcome], figures.schedule_runs.get(outcome, 0))
    lateness, add_lateness = _histogram(
        "scheduler_schedule_lateness_seconds",
        "How late schedules fired: fired time minus due time, every outcome but backfilled.",
        [],
        LATENESS_BUCKETS,
    )
    add_lateness([], figures.lateness)
    return runs, lateness


def _base_units(resource: str, amount: int) -> float:
    """A stored amount (CPU in thousandths of a core, memory in MB) in Prometheus's base
    units: cores and bytes."""
    if resource == "cpu":
        return amount / 1000
    if resource == "memory":
        return amount * MB
    return amount
