"""Celery tasks of the control plane, run by beat on the control worker. Thin: each
calls services. (The task that runs an execution is the node agent's: `jobs.agent.tasks`.)"""

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from .schedules import FIRE_BATCH_TASK, FIRE_TASK, schedule_fire, schedules_fire
from .services.deadlines import jobs_cancel_past_deadline
from .services.failover import executions_reconcile, nodes_lost_fail_over
from .services.logs import log_chunks_purge
from .services.retention import jobs_purge


@shared_task(name="jobs.reconcile_executions", ignore_result=True)
def reconcile_executions() -> dict:
    """Also run by the scheduler leader (jobs.scheduling.leader): either is enough."""
    return executions_reconcile()


@shared_task(name=FIRE_TASK, ignore_result=True)
def fire_schedule(schedule_id: int) -> None:
    """Sent by beat for a schedule's entry; works out by itself what is due."""
    schedule_fire(schedule_id=schedule_id)


@shared_task(name=FIRE_BATCH_TASK, ignore_result=True)
def fire_schedules(schedule_ids: list[int]) -> int:
    """Sent by beat (jobs.beat) for the schedules due at one moment."""
    return schedules_fire(schedule_ids=schedule_ids)


@shared_task(name="nodes.detect_lost_nodes", ignore_result=True)
def detect_lost_nodes() -> int:
    """Nodes silent too long go offline, and what they ran is failed over. Also run by
    the scheduler leader (jobs.scheduling.leader): either is enough."""
    return nodes_lost_fail_over()


@shared_task(name="jobs.cancel_past_deadline", ignore_result=True)
def cancel_past_deadline() -> int:
    """Jobs not ended by their deadline are cancelled, with the reason."""
    return jobs_cancel_past_deadline()


@shared_task(name="jobs.purge_job_logs", ignore_result=True)
def purge_job_logs() -> int:
    """Shipped logs past JOB_LOG_RETENTION_DAYS go."""
    before = timezone.now() - timedelta(days=settings.JOB_LOG_RETENTION_DAYS)
    return log_chunks_purge(before=before)


@shared_task(name="jobs.purge_jobs", ignore_result=True)
def purge_jobs() -> dict:
    """Jobs and workflows that ended more than JOB_RETENTION_DAYS ago go (0: none), for
    at most JOB_PURGE_BUDGET_SECONDS a run, so that the control worker's other work (the
    schedules' triggers) always has a process soon."""
    if not settings.JOB_RETENTION_DAYS:
        return {"jobs": 0, "workflows": 0}
    purged = jobs_purge(
        before=timezone.now() - timedelta(days=settings.JOB_RETENTION_DAYS),
        budget_seconds=settings.JOB_PURGE_BUDGET_SECONDS,
    )
    return {"jobs": purged.jobs, "workflows": purged.workflows}
