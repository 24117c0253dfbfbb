"""Reads for jobs, always through the caller's teams."""

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce, TruncMinute

from accounts.models import User
from accounts.selectors import team_list_visible
from common.db import prepared_cursor

from .models import (
    ConcurrencyLimit,
    ExecutionStatus,
    Job,
    JobDefinition,
    JobExecution,
    JobSchedule,
    JobScheduleRun,
    JobStatus,
    Workflow,
    WorkflowStep,
    WorkflowTemplate,
)


def job_list_visible(*, user: User) -> QuerySet[Job]:
    jobs = Job.objects.select_related("team", "queue", "last_execution__node")
    if user.is_staff:
        return jobs
    # The team ids as values, not a join: with one team the planner walks that team's
    # index newest first and stops after a page, however many jobs the team has.
    return jobs.filter(team_id__in=list(team_list_visible(user=user).values_list("pk", flat=True)))


def execution_list_for_job(*, job: Job) -> QuerySet[JobExecution]:
    return job.executions.select_related("node").order_by("attempt")


@dataclass(frozen=True)
class StopRequests:
    """What a node's agent must stop of the executions it runs (`cancel-requests/`)."""

    cancel: list[str]  # someone asked to cancel their jobs, or their gang ended badly
    preempt: list[dict]  # preempted: token, grace_seconds, preempted_by
    taken_away: list[str]  # failed over (the node was lost): stop, report nothing


# Every execution of these tokens, with what would stop it: an agent asks about all it
# runs every NODE_CANCEL_POLL_SECONDS and at each nudge, so it is one prepared statement.
STOP_REQUESTS_SQL = """
SELECT e.token, e.node_id, e.status,
       j.cancel_requested_at IS NOT NULL OR e.stop_requested_at IS NOT NULL,
       e.preempt_requested_at IS NOT NULL, q.preemption_grace_seconds, e.preempted_by_id
  FROM jobs_jobexecution e
  JOIN jobs_job j ON j.id = e.job_id
  LEFT JOIN resources_queue q ON q.id = j.queue_id
 WHERE e.token = ANY(%(tokens)s::text[])
 ORDER BY e.token
"""


def execution_stop_requests(*, tokens: list[str], node_id: int) -> StopRequests | None:
    """Which of these executions of the node its agent must stop: those of jobs someone
    asked to cancel, or tasks of a gang whose other task ended badly
    (`jobs.services.gangs`); those the scheduler preempted, each with the grace its queue
    gives it between SIGTERM and SIGKILL and the job it makes room for; and those taken
    away from it, failed over (its node was lost, or their process was reported gone),
    which it must stop without reporting anything. None when one of them is allocated
    to another node (tokens of no execution are left out)."""
    with prepared_cursor() as cursor:
        cursor.execute(STOP_REQUESTS_SQL, {"tokens": list(set(tokens))})
        rows = cursor.fetchall()
    if any(row[1] != node_id for row in rows):
        return None
    taken_away = [token for token, _, status, *_ in rows if status == ExecutionStatus.LOST]
    return StopRequests(
        cancel=[
            token
            for token, _, status, cancel, *_ in rows
            if cancel and status != ExecutionStatus.LOST
        ],
        preempt=[
            {
                "token": token,
                "grace_seconds": settings.PREEMPTION_GRACE_SECONDS if grace is None else grace,
                "preempted_by": preempted_by,
            }
            for token, _, status, _, preempt, grace, preempted_by in rows
            if preempt and status == ExecutionStatus.RUNNING
        ],
        taken_away=taken_away,
    )


def execution_running_on_node(*, token: str, node_id: int) -> JobExecution | None:
    """The execution `token` if it is running on the node: what a node's claim, sent
    again after its answer was lost, had claimed."""
    execution = (
        JobExecution.objects.select_related("job")
        .filter(token=token, node_id=node_id, status=ExecutionStatus.RUNNING)
        .first()
    )
    if execution is not None:
        execution.task_nodes = execution_task_nodes(execution=execution)
    return execution


def execution_task_nodes(*, execution: JobExecution) -> str:
    """The addresses (a node's name when it has none) of the nodes of its attempt's
    tasks, in task order, comma-separated: its JOB_TASK_NODES."""
    nodes = (
        JobExecution.objects.filter(job_id=execution.job_id, attempt=execution.attempt)
        .order_by("task_index")
        .values_list("node__address", "node__name")
    )
    return ",".join(address or name for address, name in nodes)


def execution_tokens_succeeded_on_node(*, tokens: list[str], node_id: int) -> list[str]:
    """Which of these tokens are recorded as succeeded on the node: what a batch of
    successes, sent again after its answer was lost, had ended."""
    return list(
        JobExecution.objects.filter(
            node_id=node_id, token__in=tokens, status=ExecutionStatus.SUCCEEDED
        ).values_list("token", flat=True)
    )


def schedule_list_visible(*, user: User) -> QuerySet[JobSchedule]:
    schedules = JobSchedule.objects.select_related("team", "definition")
    if user.is_staff:
        return schedules
    return schedules.filter(team__memberships__user=user)


def schedule_run_list(*, schedule: JobSchedule) -> QuerySet[JobScheduleRun]:
    return schedule.runs.select_related("job").order_by("-due_at")


def definition_list_visible(*, user: User) -> QuerySet[JobDefinition]:
    """The definitions of the user's teams (all of them for staff), each with
    `schedule_count`, the number of schedules that use it."""
    schedules = (
        JobSchedule.objects.filter(definition=OuterRef("pk"))
        .order_by()
        .values("definition")
        .annotate(n=Count("pk"))
        .values("n")
    )
    definitions = JobDefinition.objects.select_related("team", "queue").annotate(
        schedule_count=Coalesce(Subquery(schedules, output_field=IntegerField()), 0)
    )
    if user.is_staff:
        return definitions
    return definitions.filter(team__memberships__user=user)


def _of_visible_teams(objects: QuerySet, user: User) -> QuerySet:
    """`objects` (of a model with a team) of the user's teams; all of them for staff."""
    if user.is_staff:
        return objects
    return objects.filter(
        team_id__in=list(team_list_visible(user=user).values_list("pk", flat=True))
    )


def workflow_list_visible(*, user: User) -> QuerySet[Workflow]:
    return _of_visible_teams(Workflow.objects.select_related("team"), user)


def workflows_count_steps(workflows: list[Workflow]) -> list[Workflow]:
    """Sets `step_count` on each of a page of workflows, in one statement. Counted in
    the list's own statement (an aggregate over the join), every workflow the filter
    matches would be counted before the page is cut (GET /api/workflows/ took 372 ms
    with 200,000 workflows, 7.3 ms this way)."""
    counts = dict(
        WorkflowStep.objects.filter(workflow__in=[w.pk for w in workflows])
        .values("workflow")
        .annotate(count=Count("id"))
        .values_list("workflow", "count")
    )
    for workflow in workflows:
        workflow.step_count = counts.get(workflow.pk, 0)
    return workflows


def workflow_template_list_visible(*, user: User) -> QuerySet[WorkflowTemplate]:
    return _of_visible_teams(WorkflowTemplate.objects.select_related("team"), user)


def concurrency_limit_list_visible(*, user: User) -> QuerySet[ConcurrencyLimit]:
    return _of_visible_teams(ConcurrencyLimit.objects.select_related("team"), user)


def array_task_counts(*, array: Job) -> dict[str, int]:
    """How many of an array job's tasks are in each status (every status named)."""
    counts = dict.fromkeys(JobStatus.values, 0)
    rows = array.array_tasks.order_by().values("status").annotate(n=Count("id"))
    counts.update({row["status"]: row["n"] for row in rows})
    return counts


def jobs_finished_per_minute(*, user: User, since: datetime) -> dict[datetime, int]:
    """How many of the user's teams' jobs ended in each minute since `since` (minutes
    with none are left out). Scans the jobs that ended since then through the list's
    team filter; one query."""
    rows = (
        job_list_visible(user=user)
        .filter(finished_at__gte=since)
        .order_by()
        .annotate(minute=TruncMinute("finished_at"))
        .values("minute")
        .annotate(n=Count("id"))
        .values_list("minute", "n")
    )
    return dict(rows)
