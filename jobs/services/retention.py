"""Job retention: jobs and workflows that ended long ago are deleted, with their
attempts, allocations, retries, dependencies and logs (Slurm's PurgeJobAfter, a
Kubernetes Job's ttlSecondsAfterFinished). Without it the jobs table grows for ever.

What is kept whatever its age: a dead letter (failed and not acknowledged), until
someone requeues or acknowledges it; a job that a job not yet ended depends on (its
dependency decides that job's fate); an array job's tasks, which go with their array,
and a workflow's jobs, which go with their workflow once it has ended and none of them
is kept. A job whose attempts the metrics have not counted yet waits for the fold, so
the counters by queue never go back.

Batches of PURGE_BATCH, oldest end first, each in a transaction of its own that locks
its jobs with SKIP LOCKED: a requeue or an acknowledgement racing the purge either
wins (the job is kept, as it no longer qualifies) or finds the job gone.
"""

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction

from resources.models import LIVE_ALLOCATION_STATUSES, Allocation

from ..models import Job, JobStatus, Workflow, WorkflowStatus
from .metrics_tallies import metrics_tallies_fold

logger = logging.getLogger(__name__)

PURGE_BATCH = 500
ENDED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass
class Purged:
    jobs: int = 0
    workflows: int = 0


# Ended jobs of their own (no array task, no workflow step) that ended before `before`,
# after the last one looked at, oldest end first (the job_finished index); locked.
_ROOTS_SQL = """
SELECT id, finished_at FROM jobs_job
 WHERE finished_at < %(before)s AND finished_at >= %(after_at)s
   AND (finished_at, id) > (%(after_at)s, %(after_id)s)
   AND status = ANY(%(ended)s) AND NOT (status = %(failed)s AND acknowledged_at IS NULL)
   AND array_parent_id IS NULL AND workflow_id IS NULL
 ORDER BY finished_at, id
 LIMIT %(batch)s
   FOR UPDATE SKIP LOCKED
"""

# Ended workflows that finished before `before`, after the last one looked at; locked.
_WORKFLOWS_SQL = """
SELECT id, finished_at FROM jobs_workflow
 WHERE status <> %(running)s AND finished_at < %(before)s AND finished_at >= %(after_at)s
   AND (finished_at, id) > (%(after_at)s, %(after_id)s)
 ORDER BY finished_at, id
 LIMIT %(batch)s
   FOR UPDATE SKIP LOCKED
"""

# Of the groups (an array with its tasks, a workflow with its jobs, or a job alone; all
# the jobs `g.job_id` of group `g.group_id`), those with a job that must stay.
_KEPT_GROUPS_SQL = """
SELECT DISTINCT g.group_id
  FROM unnest(%(groups)s::bigint[], %(jobs)s::bigint[]) AS g(group_id, job_id)
  JOIN jobs_job j ON j.id = g.job_id
 WHERE j.status <> ALL(%(ended)s)
    OR (j.status = %(failed)s AND j.acknowledged_at IS NULL)
    OR EXISTS (
        SELECT 1 FROM jobs_jobdependency d JOIN jobs_job down ON down.id = d.job_id
         WHERE d.upstream_id = j.id AND down.status <> ALL(%(ended)s))
    OR EXISTS (
        SELECT 1 FROM jobs_jobexecution e
          LEFT JOIN resources_allocation a ON a.execution_id = e.id
         WHERE e.job_id = j.id AND (NOT e.metrics_folded OR a.status = ANY(%(live)s)))
    OR EXISTS (SELECT 1 FROM jobs_jobretry r WHERE r.job_id = j.id AND NOT r.metrics_folded)
"""


def jobs_purge(
    *, before: datetime, batch: int = PURGE_BATCH, budget_seconds: float = float("inf")
) -> Purged:
    """Delete the jobs and workflows that ended before `before` and need not stay (see
    the module's docstring), a batch a transaction, until none is left or
    `budget_seconds` have passed (the next run goes on where it stands: what it looks at
    first then is what this one kept); how many of each went. Folds the metrics'
    tallies first, within the same budget, so that what goes has been counted."""
    deadline = time.monotonic() + budget_seconds
    metrics_tallies_fold(budget_seconds=budget_seconds)
    purged = Purged()
    for sql in (_ROOTS_SQL, _WORKFLOWS_SQL):
        after = (datetime.min.replace(tzinfo=before.tzinfo), 0)
        while after is not None and time.monotonic() < deadline:
            with transaction.atomic():
                deleted, after = _purge_batch(sql, before=before, after=after, batch=batch)
            if sql is _ROOTS_SQL:
                purged.jobs += deleted
            else:
                purged.workflows += deleted
    if purged.jobs or purged.workflows:
        logger.info(
            "jobs purged jobs=%s workflows=%s before=%s",
            purged.jobs,
            purged.workflows,
            before.isoformat(),
        )
    return purged


def _purge_batch(sql: str, *, before, after, batch: int) -> tuple[int, tuple | None]:
    """One batch of roots (jobs, or workflows with `sql` = _WORKFLOWS_SQL): those that
    need not stay are deleted. Returns how many roots went, and where the next batch
    starts (None: this was the last)."""
    workflows = sql is _WORKFLOWS_SQL
    params = {
        "before": before,
        "after_at": after[0],
        "after_id": after[1],
        "batch": batch,
        "ended": list(ENDED),
        "failed": JobStatus.FAILED,
        "running": WorkflowStatus.RUNNING,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if not rows:
        return 0, None
    roots = [root_id for root_id, _ in rows]
    members = (
        Job.objects.filter(workflow_id__in=roots)
        if workflows
        else Job.objects.filter(array_parent_id__in=roots)
    )
    # (A workflow's steps are single jobs or gangs, never arrays.)
    pairs = list(members.values_list("workflow_id" if workflows else "array_parent_id", "id"))
    if not workflows:
        pairs += [(root, root) for root in roots]
    with connection.cursor() as cursor:
        cursor.execute(
            _KEPT_GROUPS_SQL,
            {
                "groups": [group for group, _ in pairs],
                "jobs": [job_id for _, job_id in pairs],
                "ended": list(ENDED),
                "failed": JobStatus.FAILED,
                "live": list(LIVE_ALLOCATION_STATUSES),
            },
        )
        kept = {group for (group,) in cursor.fetchall()}
    gone = [root for root in roots if root not in kept]
    job_ids = [job_id for group, job_id in pairs if group not in kept]
    if job_ids:
        # Released allocations only (the check above): an allocation protects its
        # execution from a delete that would lose what a node holds.
        Allocation.objects.filter(execution__job_id__in=job_ids).delete()
        Job.objects.filter(id__in=job_ids).delete()
    if workflows and gone:
        Workflow.objects.filter(id__in=gone).delete()
    last_id, last_at = rows[-1]
    return len(gone), ((last_at, last_id) if len(rows) == batch else None)
