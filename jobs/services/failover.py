"""Executions that will never report: those of a lost node, those whose process vanished,
and those whose message no node claimed in time (the broker may have lost it)."""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from common.wakeup import scheduler_wake
from events.models import EventType
from nodes.models import NodeStatus
from nodes.selectors import node_ids_offline_with_live_executions
from nodes.services import nodes_mark_lost

from ..accounting import allocation_release
from ..models import ExecutionStatus, Job, JobExecution, JobStatus
from .array_slots import array_task_ended
from .gangs import gang_task_ended
from .publishing import executions_publish_on_commit, stop_checks_publish_on_commit
from .retries import job_after_lost_attempt
from .timeline import job_event

logger = logging.getLogger(__name__)


def execution_fail_over(*, execution_id: int, reason: str) -> bool:
    """An execution that will never report (its node or its process is gone): mark it
    lost, release its allocation, and retry the job elsewhere. A lost attempt counts as
    an attempt, but not against `max_retries`: it is the platform's failure, not the
    job's; NODE_LOST_MAX_RETRIES bounds it for a job that keeps killing its nodes."""
    now = timezone.now()
    with transaction.atomic():
        job_id, attempt, node_id, node_name = (
            JobExecution.objects.filter(pk=execution_id)
            .values_list("job_id", "attempt", "node_id", "node__name")
            .get()
        )
        job = Job.objects.select_for_update().get(pk=job_id)
        lost = JobExecution.objects.filter(
            pk=execution_id, status__in=(ExecutionStatus.RESERVED, ExecutionStatus.RUNNING)
        ).update(status=ExecutionStatus.LOST, error=reason, finished_at=now)
        if not lost:
            return False
        allocation_release(execution_id=execution_id, now=now)
        # Taken away: its agent, if it still runs it, learns so when it is back.
        stop_checks_publish_on_commit(node_names=[node_name])
        job_event(
            job,
            EventType.JOB_NODE_LOST,
            f"attempt {attempt} lost on {node_name}: {reason}",
            attempt=attempt,
            node_id=node_id,
            data={"node": node_name, "reason": reason},
            at=now,
        )
        if job.tasks > 1:
            gang_task_ended(
                job, attempt=attempt, status=ExecutionStatus.LOST, error=reason, now=now
            )
        elif job.status in (JobStatus.RESERVED, JobStatus.RUNNING):
            times_lost = job.executions.filter(status=ExecutionStatus.LOST).count()
            job_after_lost_attempt(job, reason=reason, attempts_lost=times_lost, now=now)
            array_task_ended(job)
        scheduler_wake()
    logger.warning(
        "execution lost job=%s execution=%s reason=%r job_status=%s",
        job.id,
        execution_id,
        reason,
        job.status,
    )
    return True


def executions_fail_over_node(*, node_id: int, reason: str) -> int:
    """Fail over every live execution of a node that is gone."""
    ids = list(
        JobExecution.objects.filter(
            node_id=node_id, status__in=(ExecutionStatus.RESERVED, ExecutionStatus.RUNNING)
        ).values_list("id", flat=True)
    )
    return sum(execution_fail_over(execution_id=i, reason=reason) for i in ids)


def executions_fail_over_unreported(*, grace_seconds: float) -> int:
    """Fail over running executions that their live node no longer reports.

    An agent tracks a token before claiming it and stops after finishing it, and stamps
    each heartbeat before it lists its tokens: an execution started before that stamp
    and missing from the list has no process on the node (it died, or the agent was
    restarted under it).
    """
    stale = list(
        JobExecution.objects.filter(
            status=ExecutionStatus.RUNNING,
            node__status__in=(NodeStatus.READY, NodeStatus.CORDONED, NodeStatus.DRAINING),
            started_at__lt=F("node__last_heartbeat") - timedelta(seconds=grace_seconds),
        ).values_list("id", "token", "node__name", "node__running_tokens")
    )
    failed_over = 0
    for execution_id, token, node_name, reported in stale:
        if token in reported:
            continue
        failed_over += execution_fail_over(
            execution_id=execution_id, reason=f"process vanished on node {node_name}"
        )
    return failed_over


def execution_republish_stale(*, older_than_seconds: float) -> int:
    """Re-publish reserved executions no node has claimed in time, with the same token.

    The broker may have lost the message (Redis is disposable); a duplicate is harmless
    because the node claims the token in the database before running anything.
    """
    now = timezone.now()
    cutoff = now - timedelta(seconds=older_than_seconds)
    stale = JobExecution.objects.filter(
        Q(republished_at__isnull=True) | Q(republished_at__lt=cutoff),
        status=ExecutionStatus.RESERVED,
        reserved_at__lt=cutoff,
    )
    with transaction.atomic():
        # Locked and stamped in one transaction: the scheduler leader and beat's control
        # worker both run this, and the one that comes second skips (or no longer
        # matches) what the first has just re-published.
        tokens = list(
            stale.select_for_update(skip_locked=True)
            .order_by("reserved_at")
            .values_list("token", flat=True)
        )
        if not tokens:
            return 0
        JobExecution.objects.filter(token__in=tokens).update(republished_at=now)
        executions_publish_on_commit(tokens=tokens)
    logger.warning("re-publishing %s unclaimed executions: %s", len(tokens), " ".join(tokens[:20]))
    return len(tokens)


def executions_reconcile() -> dict:
    """Reconciliation, every RECONCILE_INTERVAL_SECONDS (by the scheduler leader, and by
    beat on the control worker): send again what no node claimed in time, and fail over
    running executions their live node no longer reports. Safe to run from both at once:
    each execution is re-published under a row lock, and failed over by a conditional
    update under its job's lock."""
    return {
        "republished": execution_republish_stale(
            older_than_seconds=settings.EXECUTION_DISPATCH_TIMEOUT_SECONDS
        ),
        "failed_over": executions_fail_over_unreported(
            grace_seconds=settings.NODE_HEARTBEAT_SECONDS
        ),
    }


def nodes_lost_fail_over() -> int:
    """Node-loss handling, every NODE_LOST_CHECK_SECONDS (by the scheduler leader, and by
    beat on the control worker): nodes silent longer than NODE_LOST_AFTER_SECONDS go
    offline, and what they ran is failed over. Safe to run from both at once: a node is
    marked lost under its row lock (skipping one the other holds), and each execution is
    failed over once (execution_fail_over)."""
    nodes_mark_lost(older_than_seconds=settings.NODE_LOST_AFTER_SECONDS)
    # Every offline node, not only those just lost: a failed-over run that died half-way
    # is finished by the next one.
    return sum(
        executions_fail_over_node(node_id=node_id, reason="node lost")
        for node_id in node_ids_offline_with_live_executions()
    )
