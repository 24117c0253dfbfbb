"""A cluster whose metrics are known by construction: jobs in every status with their
executions at set times, retries, queues with and without quotas, nodes up, offline and
silent, schedule runs and node losses. `expected` says what the figures must be;
`scrape` reads them."""

from dataclasses import dataclass, field
from datetime import timedelta

from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from accounts.models import Team
from jobs.models import (
    ExecutionStatus,
    Job,
    JobDefinition,
    JobExecution,
    JobRetry,
    JobSchedule,
    JobScheduleRun,
    JobStatus,
    PendingReason,
    ScheduleRunOutcome,
)
from nodes.models import Node, NodeLoss, NodeStatus
from resources.models import Allocation, AllocationStatus, Queue

MB = 1024 * 1024


def scrape(client: Client | None = None, **headers) -> dict:
    """The samples of /metrics: {(name, sorted labels): value}."""
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.content.decode())
        for s in family.samples
    }


# The counters that must never go back, whatever rows are deleted.
COUNTERS = (
    "scheduler_jobs_finished_total",
    "scheduler_job_run_seconds_count",
    "scheduler_retries_total",
    "scheduler_schedule_runs_total",
    "scheduler_schedule_lateness_seconds_count",
)


def assert_counters_kept(before: dict, after: dict) -> None:
    """Each counter of COUNTERS that counted something in `before` is the same in
    `after`."""
    for name in COUNTERS:
        keys = [key for key in before if key[0] == name and before[key]]
        assert keys and all(after[key] == before[key] for key in keys), name


@dataclass
class World:
    now: object
    team: Team
    default: Queue
    gpu: Queue
    node: Node
    jobs: list[Job] = field(default_factory=list)


def _job(world, name, *, queue=None, age, status=JobStatus.SUCCEEDED, **fields) -> Job:
    job = Job.objects.create(
        team=world.team,
        queue=queue or world.default,
        name=f"job-mark-{name}",  # a name no label may hold
        command=["true"],
        status=status,
        **fields,
    )
    # created_at is set on insert; put it back in the past.
    job.created_at = world.now - timedelta(seconds=age)
    Job.objects.filter(pk=job.pk).update(created_at=job.created_at)
    world.jobs.append(job)
    return job


def _execution(world, job, attempt, status, *, started=None, finished=None, held=None):
    """An attempt that started `started` seconds ago and ended `finished` seconds ago;
    `held` (cpu millis, memory MB, gpu) gives it a live allocation on the node."""
    execution = JobExecution.objects.create(
        job=job,
        attempt=attempt,
        node=world.node,
        token=f"job-{job.pk}-attempt-{attempt}",
        status=status,
        reserved_at=world.now - timedelta(seconds=(started or 0) + 1),
        started_at=None if started is None else world.now - timedelta(seconds=started),
        finished_at=None if finished is None else world.now - timedelta(seconds=finished),
    )
    if held is not None:
        cpu, memory, gpu = held
        live = AllocationStatus.ACTIVE if started is not None else AllocationStatus.RESERVED
        Allocation.objects.create(
            execution=execution,
            node=world.node,
            queue_id=job.queue_id,
            team_id=job.team_id,
            cpu_millis=cpu,
            memory_mb=memory,
            gpu=gpu,
            status=live,
        )
    return execution


def build_world(team: Team, default_queue: Queue) -> World:
    now = timezone.now()
    gpu = Queue.objects.create(name="gpu", quota_cpu_millis=4000, quota_memory_mb=2048)
    gpu.teams.add(team)
    node = Node.objects.create(
        name="n-up",
        cpu_millis=8000,
        memory_mb=16384,
        gpu=1,
        allocated_cpu_millis=3000,
        allocated_memory_mb=1536,
        allocated_gpu=1,
        used_cpu_millis=1500,
        used_memory_mb=700,
        last_heartbeat=now,
    )
    Node.objects.create(
        name="n-off",
        cpu_millis=4000,
        memory_mb=4096,
        status=NodeStatus.OFFLINE,
        last_heartbeat=now - timedelta(hours=1),
        used_cpu_millis=100,  # stale: not shown
        used_memory_mb=100,
    )
    Node.objects.create(
        name="n-silent", cpu_millis=2000, memory_mb=2048, last_heartbeat=now - timedelta(hours=1)
    )
    world = World(now=now, team=team, default=default_queue, gpu=gpu, node=node)

    pending = JobStatus.PENDING
    _job(world, "new", age=30, status=pending)
    _job(
        world,
        "no-room",
        age=100,
        status=pending,
        pending_reason=PendingReason.INSUFFICIENT_CAPACITY,
    )
    # Waits for a retry not yet due: not among the due jobs' ages.
    retry_later = _job(
        world,
        "retry-later",
        age=1000,
        status=pending,
        pending_reason=PendingReason.WAITING_RETRY,
        not_before=now + timedelta(seconds=60),
    )
    _execution(world, retry_later, 1, ExecutionStatus.FAILED, started=900, finished=899)
    JobRetry.objects.create(job=retry_later, attempt=2, reason="exit code 1", due_at=now)
    retry_due = _job(
        world,
        "retry-due",
        queue=gpu,
        age=500,
        status=pending,
        pending_reason=PendingReason.WAITING_RETRY,
        not_before=now - timedelta(seconds=20),
    )
    JobRetry.objects.create(job=retry_due, attempt=1, reason="node lost", due_at=now)
    reserved = _job(world, "reserved", queue=gpu, age=2, status=JobStatus.RESERVED)
    _execution(world, reserved, 1, ExecutionStatus.RESERVED, held=(1000, 512, 0))
    running = _job(world, "running", age=8, status=JobStatus.RUNNING)
    _execution(world, running, 1, ExecutionStatus.RUNNING, started=5, held=(2000, 1024, 1))
    ok = _job(world, "ok", age=100)
    _execution(world, ok, 1, ExecutionStatus.SUCCEEDED, started=97, finished=90)
    retried = _job(world, "retried", age=200)
    _execution(world, retried, 1, ExecutionStatus.FAILED, started=190, finished=189)
    JobRetry.objects.create(job=retried, attempt=2, reason="exit code 3", due_at=now)
    _execution(world, retried, 2, ExecutionStatus.SUCCEEDED, started=150, finished=148)
    dead = _job(world, "dead", queue=gpu, age=61, status=JobStatus.FAILED)
    _execution(world, dead, 1, ExecutionStatus.FAILED, started=60, finished=30)
    acked = _job(world, "acked", queue=gpu, age=20, status=JobStatus.FAILED, acknowledged_at=now)
    _execution(world, acked, 1, ExecutionStatus.LOST, finished=10)  # lost before it started
    cancelled = _job(world, "cancelled", age=45, status=JobStatus.CANCELLED)
    _execution(world, cancelled, 1, ExecutionStatus.CANCELLED, started=40, finished=39.5)

    definition = JobDefinition.objects.create(
        team=team, queue=default_queue, name="nightly", command=["true"]
    )
    schedule = JobSchedule.objects.create(
        team=team, definition=definition, name="nightly", interval_seconds=60
    )
    for due_ago, late, outcome in (
        (120, 0.2, ScheduleRunOutcome.SUBMITTED),
        (60, 3, ScheduleRunOutcome.SKIPPED_RUNNING),
    ):
        due = now - timedelta(seconds=due_ago)
        JobScheduleRun.objects.create(
            schedule=schedule, due_at=due, fired_at=due + timedelta(seconds=late), outcome=outcome
        )
    NodeLoss.objects.create(node_name="n-off", lost_at=now - timedelta(hours=2))
    NodeLoss.objects.create(node_name="n-off", lost_at=now - timedelta(hours=1))
    return world


# What /metrics must say about the world: {(name, labels as a sorted tuple): value}.
EXPECTED = {
    ("scheduler_jobs", (("queue", "default"), ("status", "pending"))): 3,
    ("scheduler_jobs", (("queue", "default"), ("status", "reserved"))): 0,
    ("scheduler_jobs", (("queue", "default"), ("status", "running"))): 1,
    ("scheduler_jobs", (("queue", "gpu"), ("status", "pending"))): 1,
    ("scheduler_jobs", (("queue", "gpu"), ("status", "reserved"))): 1,
    ("scheduler_jobs", (("queue", "gpu"), ("status", "running"))): 0,
    ("scheduler_pending_jobs", (("queue", "default"), ("reason", "waiting_scheduler"))): 1,
    ("scheduler_pending_jobs", (("queue", "default"), ("reason", "insufficient_capacity"))): 1,
    ("scheduler_pending_jobs", (("queue", "default"), ("reason", "waiting_retry"))): 1,
    ("scheduler_pending_jobs", (("queue", "default"), ("reason", "queue_quota"))): 0,
    ("scheduler_pending_jobs", (("queue", "gpu"), ("reason", "waiting_retry"))): 1,
    ("scheduler_pending_jobs", (("queue", "gpu"), ("reason", "waiting_scheduler"))): 0,
    ("scheduler_jobs_finished_total", (("outcome", "succeeded"), ("queue", "default"))): 2,
    ("scheduler_jobs_finished_total", (("outcome", "failed"), ("queue", "default"))): 2,
    ("scheduler_jobs_finished_total", (("outcome", "cancelled"), ("queue", "default"))): 1,
    ("scheduler_jobs_finished_total", (("outcome", "lost"), ("queue", "default"))): 0,
    ("scheduler_jobs_finished_total", (("outcome", "failed"), ("queue", "gpu"))): 1,
    ("scheduler_jobs_finished_total", (("outcome", "lost"), ("queue", "gpu"))): 1,
    ("scheduler_jobs_finished_total", (("outcome", "succeeded"), ("queue", "gpu"))): 0,
    # Runs: ok 7 s and retried's second attempt 2 s.
    ("scheduler_job_run_seconds_count", (("outcome", "succeeded"), ("queue", "default"))): 2,
    ("scheduler_job_run_seconds_sum", (("outcome", "succeeded"), ("queue", "default"))): 9,
    (
        "scheduler_job_run_seconds_bucket",
        (("le", "1.0"), ("outcome", "succeeded"), ("queue", "default")),
    ): 0,
    (
        "scheduler_job_run_seconds_bucket",
        (("le", "5.0"), ("outcome", "succeeded"), ("queue", "default")),
    ): 1,
    (
        "scheduler_job_run_seconds_bucket",
        (("le", "10.0"), ("outcome", "succeeded"), ("queue", "default")),
    ): 2,
    (
        "scheduler_job_run_seconds_bucket",
        (("le", "+Inf"), ("outcome", "succeeded"), ("queue", "default")),
    ): 2,
    # The lost attempt never started: no run time.
    ("scheduler_job_run_seconds_count", (("outcome", "lost"), ("queue", "gpu"))): 0,
    ("scheduler_job_run_seconds_sum", (("outcome", "failed"), ("queue", "gpu"))): 30,
    # Waits, per job that started: retry-later 100, running 3, ok 3, retried 10 (its first
    # attempt), cancelled 5; in gpu, dead 1.
    ("scheduler_job_wait_seconds_count", (("queue", "default"),)): 5,
    ("scheduler_job_wait_seconds_sum", (("queue", "default"),)): 121,
    ("scheduler_job_wait_seconds_bucket", (("le", "5.0"), ("queue", "default"))): 3,
    ("scheduler_job_wait_seconds_bucket", (("le", "10.0"), ("queue", "default"))): 4,
    ("scheduler_job_wait_seconds_count", (("queue", "gpu"),)): 1,
    ("scheduler_job_wait_seconds_sum", (("queue", "gpu"),)): 1,
    ("scheduler_placements_total", ()): 9,
    ("scheduler_queue_allocated", (("queue", "default"), ("resource", "cpu"))): 2.0,
    ("scheduler_queue_allocated", (("queue", "default"), ("resource", "memory"))): 1024 * MB,
    ("scheduler_queue_allocated", (("queue", "default"), ("resource", "gpu"))): 1,
    ("scheduler_queue_allocated", (("queue", "gpu"), ("resource", "cpu"))): 1.0,
    ("scheduler_queue_allocated", (("queue", "gpu"), ("resource", "memory"))): 512 * MB,
    ("scheduler_queue_quota", (("queue", "gpu"), ("resource", "cpu"))): 4.0,
    ("scheduler_queue_quota", (("queue", "gpu"), ("resource", "memory"))): 2048 * MB,
    ("scheduler_queue_past_share", (("queue", "default"),)): 0,
    ("scheduler_queue_past_share", (("queue", "gpu"),)): 0,
    ("scheduler_team_past_share", (("team", "blue"),)): 0,
    ("scheduler_dead_letter_jobs", (("queue", "default"),)): 0,
    ("scheduler_dead_letter_jobs", (("queue", "gpu"),)): 1,
    ("scheduler_retries_total", (("queue", "default"),)): 2,
    ("scheduler_retries_total", (("queue", "gpu"),)): 1,
    ("scheduler_node_up", (("node", "n-up"),)): 1,
    ("scheduler_node_up", (("node", "n-off"),)): 0,
    ("scheduler_node_up", (("node", "n-silent"),)): 0,
    ("scheduler_node_capacity", (("node", "n-up"), ("resource", "cpu"))): 8.0,
    ("scheduler_node_capacity", (("node", "n-up"), ("resource", "memory"))): 16384 * MB,
    ("scheduler_node_capacity", (("node", "n-up"), ("resource", "gpu"))): 1,
    ("scheduler_node_capacity", (("node", "n-off"), ("resource", "cpu"))): 4.0,
    ("scheduler_node_allocated", (("node", "n-up"), ("resource", "cpu"))): 3.0,
    ("scheduler_node_allocated", (("node", "n-up"), ("resource", "memory"))): 1536 * MB,
    ("scheduler_node_allocated", (("node", "n-silent"), ("resource", "cpu"))): 0,
    ("scheduler_node_used", (("node", "n-up"), ("resource", "cpu"))): 1.5,
    ("scheduler_node_used", (("node", "n-up"), ("resource", "memory"))): 700 * MB,
    ("scheduler_schedule_runs_total", (("outcome", "submitted"),)): 1,
    ("scheduler_schedule_runs_total", (("outcome", "skipped_running"),)): 1,
    ("scheduler_schedule_runs_total", (("outcome", "skipped_misfire"),)): 0,
    ("scheduler_schedule_lateness_seconds_count", ()): 2,
    ("scheduler_schedule_lateness_seconds_sum", ()): 3.2,
    ("scheduler_schedule_lateness_seconds_bucket", (("le", "0.25"),)): 1,
    ("scheduler_schedule_lateness_seconds_bucket", (("le", "2.5"),)): 1,
    ("scheduler_schedule_lateness_seconds_bucket", (("le", "5.0"),)): 2,
    ("scheduler_nodes_lost_total", ()): 2,
    ("scheduler_leader", ()): 0,
}
