"""Reads for jobs, always through the caller's teams."""

from datetime import datetime

from django.conf import settings
from django.db.models import Count, IntegerField, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce, TruncMinute

from accounts.models import User
from accounts.selectors import team_list_visible

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


def execution_tokens_cancel_requested(*, tokens: list[str]) -> list[str]:
    """Which of these running executions belong to jobs someone asked to cancel, or are
    tasks of a gang whose other task ended badly (`jobs.services.gangs`)."""
    return list(
        JobExecution.objects.filter(
            Q(job__cancel_requested_at__isnull=False) | Q(stop_requested_at__isnull=False),
            token__in=tokens,
        ).values_list("token", flat=True)
    )


def execution_preemptions_requested(*, tokens: list[str]) -> list[dict]:
    """Which of these running executions the scheduler preempted: each token, the grace
    its queue gives it between SIGTERM and SIGKILL, and the job it makes room for."""
    rows = (
        JobExecution.objects.filter(
            token__in=tokens,
            status=ExecutionStatus.RUNNING,
            preempt_requested_at__isnull=False,
        )
        .order_by("token")
        .values_list("token", "job__queue__preemption_grace_seconds", "preempted_by_id")
    )
    return [
        {
            "token": token,
            "grace_seconds": settings.PREEMPTION_GRACE_SECONDS if grace is None else grace,
            "preempted_by": preempted_by,
        }
        for token, grace, preempted_by in rows
    ]


def execution_tokens_taken_away(*, tokens: list[str], node_id: int) -> list[str]:
    """Which of these executions of the node were failed over (its node was lost, or
    their process was reported gone): the agent must stop them and report nothing."""
    return list(
        JobExecution.objects.filter(
            token__in=tokens, node_id=node_id, status=ExecutionStatus.LOST
        ).values_list("token", flat=True)
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
