"""Dependencies between jobs: recording them at submission, and settling the jobs that
wait on them when an upstream changes (starts, ends, or is requeued).

Settling runs in the transaction that changed the upstreams, so a dependent is released
(its reason cleared and the scheduler woken) or cancelled as the upstream's change
commits, never by polling. Each dependent is locked before its upstreams are read, in a
statement of its own: two upstreams ending at once in two transactions are then read by
the second one after the first has committed, so neither misses the other's outcome.
Workflows' statuses and their `max_parallel` are kept here too, as steps end.
"""

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import Case, Count, Q, Value, When
from django.utils import timezone

from accounts.models import Team
from common.wakeup import scheduler_wake

from ..models import (
    DEPENDENCY_NEVER_SATISFIED,
    TERMINAL_JOB_STATUSES,
    DependencyCondition,
    Job,
    JobDependency,
    JobStatus,
    OnUnsatisfied,
    PendingReason,
    TriggerRule,
    Workflow,
    WorkflowStatus,
)
from .timeline import jobs_cancelled_events

logger = logging.getLogger(__name__)

MAX_DEPENDENCIES = 1000


def job_dependencies_check(*, team: Team, depends_on: Sequence[dict]) -> None:
    """Refuse dependencies on jobs that do not exist or are another team's (the same
    answer for both, so others' job ids do not leak), and repeated upstreams."""
    ids = [d["job"] for d in depends_on]
    if len(ids) > MAX_DEPENDENCIES:
        raise ValidationError({"depends_on": [f"At most {MAX_DEPENDENCIES} dependencies."]})
    if len(set(ids)) != len(ids):
        raise ValidationError({"depends_on": ["A job is named more than once."]})
    found = set(Job.objects.filter(team=team, pk__in=ids).values_list("pk", flat=True))
    missing = [i for i in ids if i not in found]
    if missing:
        raise ValidationError(
            {"depends_on": [f"No job {i} in team {team.slug}." for i in missing[:10]]}
        )


def job_dependencies_lock(*, depends_on: Sequence[dict]) -> None:
    """Share-lock the upstream jobs until the new dependent commits: an upstream ending
    meanwhile waits, then finds the dependent and settles it; one that ended before is
    seen ended by the dependent's own first settling."""
    if depends_on:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id FROM jobs_job WHERE id = ANY(%s::bigint[]) ORDER BY id FOR SHARE",
                [[d["job"] for d in depends_on]],
            )


def job_dependencies_record(*, job: Job, depends_on: Sequence[dict]) -> None:
    """Write a new job's dependencies and settle it: it may be runnable already (its
    upstreams met their conditions before it came) or never (they cannot any more)."""
    JobDependency.objects.bulk_create(
        JobDependency(job=job, upstream_id=d["job"], on=d["on"]) for d in depends_on
    )
    dependents_settle(job_ids=[job.pk])
    job.refresh_from_db(fields=["status", "pending_reason", "cancel_reason", "finished_at"])


# --- Settling -------------------------------------------------------------------------

# The held jobs to settle: the dependents of the upstreams, the jobs named, and the held
# steps of the upstreams' workflows (a step that ended may leave room under
# max_parallel). Locked in id order, so two settles never deadlock on them.
_LOCK_SQL = """
SELECT j.id FROM jobs_job j
 WHERE j.status = %(pending)s AND j.pending_reason = %(held)s
   AND (j.id = ANY(%(jobs)s::bigint[])
        OR j.id IN (SELECT d.job_id FROM jobs_jobdependency d
                     WHERE d.upstream_id = ANY(%(upstreams)s::bigint[]))
        OR j.workflow_id IN (SELECT w.id FROM jobs_job u JOIN jobs_workflow w
                                 ON w.id = u.workflow_id AND w.max_parallel IS NOT NULL
                              WHERE u.id = ANY(%(upstreams)s::bigint[])))
 ORDER BY j.id
   FOR UPDATE OF j
"""

# Each locked job's verdict from its upstreams as they are now: `ready` (its dependencies
# are met), `never` (they cannot be any more: an upstream in a final state decided it)
# and the upstream that decided it, or neither. An edge is met or can never be met by
# its condition; a workflow step's rule counts its upstreams' outcomes instead.
_VERDICT_SQL = """
WITH edge AS (
    SELECT d.job_id, u.id AS upstream_id, u.status, u.name,
           CASE d.on
               WHEN %(succeeded)s THEN u.status = %(job_succeeded)s
               WHEN %(failed)s THEN u.status = %(job_failed)s
               WHEN %(finished)s THEN u.status = ANY(%(terminal)s)
               WHEN %(started)s THEN u.started_at IS NOT NULL
           END AS met,
           CASE d.on
               WHEN %(succeeded)s THEN u.status IN (%(job_failed)s, %(job_cancelled)s)
               WHEN %(failed)s THEN u.status IN (%(job_succeeded)s, %(job_cancelled)s)
               WHEN %(finished)s THEN false
               WHEN %(started)s THEN u.status = %(job_cancelled)s AND u.started_at IS NULL
           END AS unmet
      FROM jobs_jobdependency d JOIN jobs_job u ON u.id = d.upstream_id
     WHERE d.job_id = ANY(%(jobs)s::bigint[])
), tally AS (
    SELECT job_id,
           count(*) AS total,
           count(*) FILTER (WHERE met) AS met,
           count(*) FILTER (WHERE status = %(job_succeeded)s) AS succeeded,
           count(*) FILTER (WHERE status = %(job_failed)s) AS failed,
           count(*) FILTER (WHERE status = ANY(%(terminal)s)) AS ended,
           min(upstream_id) FILTER (WHERE unmet) AS unmet_by,
           min(upstream_id) FILTER (WHERE status = %(job_failed)s) AS failed_by,
           min(upstream_id) FILTER (WHERE status IN (%(job_succeeded)s, %(job_cancelled)s))
               AS not_failed_by
      FROM edge GROUP BY job_id
)
SELECT j.id, j.trigger_rule, j.on_unsatisfied, j.workflow_id, coalesce(t.total, 0),
       coalesce(t.met, 0), coalesce(t.succeeded, 0), coalesce(t.failed, 0),
       coalesce(t.ended, 0), t.unmet_by, t.failed_by, t.not_failed_by
  FROM jobs_job j LEFT JOIN tally t ON t.job_id = j.id
 WHERE j.id = ANY(%(jobs)s::bigint[])
 ORDER BY j.id
"""


@dataclass(frozen=True)
class Verdict:
    job_id: int
    ready: bool
    never: bool
    decided_by: int | None  # the upstream whose outcome makes it `never`
    on_unsatisfied: str
    workflow_id: int | None


def _verdict(row) -> Verdict:
    job_id, rule, on_unsatisfied, workflow_id, total, met, ok, failed, ended = row[:9]
    unmet_by, failed_by, not_failed_by = row[9:]
    all_ended = ended == total
    if total == 0:
        ready, never, by = True, False, None
    elif rule == TriggerRule.EACH:
        ready, never, by = met == total, unmet_by is not None, unmet_by
    elif rule == TriggerRule.ALL_SUCCEEDED:
        ready, never, by = ok == total, ended > ok, unmet_by or failed_by or not_failed_by
    elif rule == TriggerRule.ALL_FINISHED:
        ready, never, by = all_ended, False, None
    elif rule == TriggerRule.ANY_FAILED:
        ready, never, by = failed > 0, all_ended and failed == 0, None
    elif rule == TriggerRule.ALL_FAILED:
        ready, never, by = failed == total, ended > failed, not_failed_by
    else:  # NONE_FAILED
        ready, never, by = all_ended and failed == 0, failed > 0, failed_by
    return Verdict(job_id, ready, never and not ready, by, on_unsatisfied, workflow_id)


def _verdict_parameters(job_ids: list[int]) -> dict:
    return {
        "jobs": job_ids,
        "succeeded": DependencyCondition.SUCCEEDED,
        "failed": DependencyCondition.FAILED,
        "finished": DependencyCondition.FINISHED,
        "started": DependencyCondition.STARTED,
        "job_succeeded": JobStatus.SUCCEEDED,
        "job_failed": JobStatus.FAILED,
        "job_cancelled": JobStatus.CANCELLED,
        "terminal": list(TERMINAL_JOB_STATUSES),
    }


def _never_reason(verdict: Verdict, upstreams: dict[int, tuple[str, str]]) -> str:
    if verdict.decided_by is None:
        return DEPENDENCY_NEVER_SATISFIED + "no upstream failed"
    name, status = upstreams[verdict.decided_by]
    return f"{DEPENDENCY_NEVER_SATISFIED}job {verdict.decided_by} ({name}) {status}"


def _workflow_room(workflow_ids: set[int]) -> dict[int, int]:
    """How many more steps each workflow with a max_parallel may have active now. Its row
    is locked first, so two settles of one workflow count one after the other."""
    limits = dict(
        Workflow.objects.select_for_update()
        .filter(pk__in=workflow_ids, max_parallel__isnull=False)
        .order_by("pk")
        .values_list("pk", "max_parallel")
    )
    if not limits:
        return {}
    active = Job.objects.filter(workflow_id__in=limits).filter(
        Q(status__in=(JobStatus.RESERVED, JobStatus.RUNNING))
        | (Q(status=JobStatus.PENDING) & ~Q(pending_reason=PendingReason.WAITING_DEPENDENCIES))
    )
    counts = dict(
        active.order_by()
        .values("workflow_id")
        .annotate(n=Count("id"))
        .values_list("workflow_id", "n")
    )
    return {pk: limit - counts.get(pk, 0) for pk, limit in limits.items()}


def dependents_settle(
    *, upstream_ids: Iterable[int] = (), job_ids: Iterable[int] = (), now=None
) -> None:
    """Settle the held jobs that depend on `upstream_ids` (which just changed) and the
    held jobs `job_ids`: release those whose dependencies are met (within their
    workflow's max_parallel), cancel those whose dependencies can never be met (unless
    submitted with on_unsatisfied "wait"), and on through what those cancels decide.
    Then bring the workflows of every job involved up to date. Runs in the caller's
    transaction."""
    now = now or timezone.now()
    upstreams, jobs = list(upstream_ids), list(job_ids)
    workflows: set[int] = set()
    released_any = False
    while upstreams or jobs:
        with connection.cursor() as cursor:
            cursor.execute(
                _LOCK_SQL,
                {
                    "pending": JobStatus.PENDING,
                    "held": PendingReason.WAITING_DEPENDENCIES,
                    "jobs": jobs,
                    "upstreams": upstreams,
                },
            )
            locked = [row[0] for row in cursor.fetchall()]
            if upstreams:
                workflows.update(
                    Job.objects.filter(pk__in=upstreams, workflow__isnull=False).values_list(
                        "workflow_id", flat=True
                    )
                )
            if not locked:
                break
            cursor.execute(_VERDICT_SQL, _verdict_parameters(locked))
            verdicts = [_verdict(row) for row in cursor.fetchall()]
        workflows.update(v.workflow_id for v in verdicts if v.workflow_id)
        ready = [v for v in verdicts if v.ready]
        room = _workflow_room({v.workflow_id for v in ready if v.workflow_id})
        released = []
        for verdict in ready:
            if verdict.workflow_id in room:
                if room[verdict.workflow_id] <= 0:
                    continue
                room[verdict.workflow_id] -= 1
            released.append(verdict.job_id)
        if released:
            Job.objects.filter(pk__in=released).update(pending_reason=PendingReason.NONE)
            released_any = True
            logger.info("dependencies met, released jobs=%s", released)
        cancelled = _cancel_never(
            [v for v in verdicts if v.never and v.on_unsatisfied == OnUnsatisfied.CANCEL], now
        )
        upstreams, jobs = cancelled, []
    if released_any:
        scheduler_wake()
    if workflows:
        workflows_refresh(workflow_ids=workflows, now=now)


def _cancel_never(verdicts: list[Verdict], now) -> list[int]:
    if not verdicts:
        return []
    deciders = Job.objects.filter(pk__in=[v.decided_by for v in verdicts if v.decided_by])
    upstreams = {
        pk: (f"step {step}" if step else name, status)
        for pk, name, status, step in deciders.values_list(
            "pk", "name", "status", "workflow_step__name"
        )
    }
    reasons = {v.job_id: _never_reason(v, upstreams) for v in verdicts}
    Job.objects.filter(pk__in=reasons).update(
        status=JobStatus.CANCELLED,
        pending_reason=PendingReason.NONE,
        finished_at=now,
        cancel_reason=Case(*[When(pk=pk, then=Value(text)) for pk, text in reasons.items()]),
    )
    jobs_cancelled_events(reasons, at=now)
    for pk, text in reasons.items():
        logger.info("job cancelled job=%s reason=%r", pk, text)
    return list(reasons)


# --- Workflows' statuses --------------------------------------------------------------


def workflows_refresh(*, workflow_ids: Iterable[int], now=None) -> None:
    """A workflow whose steps have all ended becomes failed (a step failed), succeeded
    (none failed), or cancelled (a step was cancelled by a person); until then it is
    running. A cancelled workflow stays cancelled (its retry sets it running first)."""
    now = now or timezone.now()
    ids = list(workflow_ids)
    if not ids:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE jobs_workflow w
               SET status = CASE WHEN w.status = %(cancelled)s THEN %(cancelled)s
                                 WHEN s.live > 0 THEN %(running)s
                                 WHEN s.failed > 0 THEN %(failed)s
                                 WHEN s.by_hand > 0 THEN %(cancelled)s
                                 ELSE %(succeeded)s END,
                   finished_at = CASE WHEN s.live > 0 THEN NULL
                                      ELSE coalesce(w.finished_at, %(now)s) END
              FROM (SELECT workflow_id,
                           count(*) FILTER (WHERE status <> ALL(%(terminal)s)) AS live,
                           count(*) FILTER (WHERE status = %(job_failed)s) AS failed,
                           count(*) FILTER (WHERE status = %(job_cancelled)s
                                            AND cancel_reason NOT LIKE %(never)s) AS by_hand
                      FROM jobs_job WHERE workflow_id = ANY(%(ids)s::bigint[])
                     GROUP BY workflow_id) s
             WHERE w.id = s.workflow_id
            """,
            {
                "ids": ids,
                "now": now,
                "running": WorkflowStatus.RUNNING,
                "succeeded": WorkflowStatus.SUCCEEDED,
                "failed": WorkflowStatus.FAILED,
                "cancelled": WorkflowStatus.CANCELLED,
                "terminal": list(TERMINAL_JOB_STATUSES),
                "job_failed": JobStatus.FAILED,
                "job_cancelled": JobStatus.CANCELLED,
                "never": DEPENDENCY_NEVER_SATISFIED.replace("%", r"\%") + "%",
            },
        )


# --- Re-arming --------------------------------------------------------------------------

_DOWNSTREAM_CANCELLED_SQL = """
WITH RECURSIVE downstream(id) AS (
    SELECT d.job_id FROM jobs_jobdependency d
      JOIN jobs_job j ON j.id = d.job_id
     WHERE d.upstream_id = %(job)s AND j.status = %(cancelled)s AND j.cancel_reason LIKE %(never)s
    UNION
    SELECT d.job_id FROM jobs_jobdependency d
      JOIN downstream ON d.upstream_id = downstream.id
      JOIN jobs_job j ON j.id = d.job_id
     WHERE j.status = %(cancelled)s AND j.cancel_reason LIKE %(never)s
)
SELECT id FROM downstream ORDER BY id
"""


def dependents_rearm(*, job: Job) -> list[int]:
    """A requeued job's dependents that it had cancelled (and theirs, on down) wait for
    their dependencies again; returns their ids."""
    with connection.cursor() as cursor:
        cursor.execute(
            _DOWNSTREAM_CANCELLED_SQL,
            {
                "job": job.pk,
                "cancelled": JobStatus.CANCELLED,
                "never": DEPENDENCY_NEVER_SATISFIED.replace("%", r"\%") + "%",
            },
        )
        ids = [row[0] for row in cursor.fetchall()]
    jobs_rearm(job_ids=ids)
    return ids


def jobs_rearm(*, job_ids: Sequence[int]) -> None:
    """Put ended jobs back to waiting for their dependencies (locked by id first)."""
    if not job_ids:
        return
    list(Job.objects.select_for_update().filter(pk__in=job_ids).order_by("pk").values("pk"))
    Job.objects.filter(pk__in=job_ids, status__in=TERMINAL_JOB_STATUSES).update(
        status=JobStatus.PENDING,
        pending_reason=PendingReason.WAITING_DEPENDENCIES,
        cancel_reason="",
        finished_at=None,
        not_before=None,
        acknowledged_at=None,
        cancel_requested_at=None,
    )
