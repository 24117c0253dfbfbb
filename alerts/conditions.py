"""What each rule's condition sees in the database now: the subjects for which it holds,
by dedupe key. Read from PostgreSQL alone, never from a job's process, so a job that was
SIGKILLed or lost its node alerts all the same."""

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, Min, Q
from django.db.models.functions import Coalesce, Greatest

from jobs.models import (
    ExecutionStatus,
    Job,
    JobExecution,
    JobSchedule,
    JobScheduleRun,
    JobStatus,
    PendingReason,
    ScheduleRunOutcome,
)
from jobs.services.deadlines import DEADLINE_PASSED
from nodes.models import Node, NodeStatus

from .models import AlertRule, Condition


@dataclass(frozen=True)
class Firing:
    summary: str
    subject: dict = field(default_factory=dict)  # job, node, schedule, queue ids or names


def glob_regex(pattern: str) -> str:
    """A glob (`nightly-*`, `report-?`) as an anchored regular expression."""
    escaped = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return f"^{escaped}$"


def _jobs(rule: AlertRule):
    jobs = Job.objects.filter(team_id=rule.team_id)
    if rule.queue:
        jobs = jobs.filter(queue__name=rule.queue)
    if rule.definition_id:
        jobs = jobs.filter(definition_id=rule.definition_id)
    if rule.schedule_id:
        jobs = jobs.filter(schedule_runs__schedule_id=rule.schedule_id)
    if rule.name_pattern:
        jobs = jobs.filter(name__regex=glob_regex(rule.name_pattern))
    return jobs


def _job_firings(jobs, summary: str) -> dict[str, Firing]:
    return {
        f"job:{job_id}": Firing(
            f"job {job_id} {name}: {summary}", {"job": job_id, "job_name": name}
        )
        for job_id, name in jobs.order_by("id").values_list("id", "name")[:1000]
    }


def job_dead_lettered(rule: AlertRule, now: datetime) -> dict[str, Firing]:
    # Dead letters from before the rule was made are not news.
    jobs = _jobs(rule).dead_letter().filter(finished_at__gte=rule.created_at)
    return _job_firings(jobs, "failed for good")


def job_retrying(rule: AlertRule, now: datetime) -> dict[str, Firing]:
    jobs = _jobs(rule).filter(status=JobStatus.PENDING, pending_reason=PendingReason.WAITING_RETRY)
    return _job_firings(jobs, "is retrying")


def job_running_longer(rule: AlertRule, now: datetime) -> dict[str, Firing]:
    jobs = _jobs(rule).filter(
        status=JobStatus.RUNNING, started_at__lt=now - timedelta(seconds=rule.threshold)
    )
    return _job_firings(jobs, f"has run longer than {rule.threshold:g} s")


def job_deadline_passed(rule: AlertRule, now: datetime) -> dict[str, Firing]:
    # Cancelled (a running one: asked to stop) for its deadline since the rule was made.
    since = rule.created_at
    jobs = _jobs(rule).filter(
        Q(cancel_requested_at__gte=since) | Q(status=JobStatus.CANCELLED, finished_at__gte=since),
        cancel_reason=DEADLINE_PASSED,
    )
    return _job_firings(jobs, "deadline passed")


def schedule_missed(rule: AlertRule, now: datetime) -> dict[str, Firing]:
    """Schedules whose latest run (since the rule was made) skipped or missed due times,
    or fired late: the incident lasts until a run goes well."""
    schedules = JobSchedule.objects.filter(team_id=rule.team_id)
    if rule.schedule_id:
        schedules = schedules.filter(pk=rule.schedule_id)
    if rule.definition_id:
        schedules = schedules.filter(definition_id=rule.definition_id)
    if rule.name_pattern:
        schedules = schedules.filter(name__regex=glob_regex(rule.name_pattern))
    if rule.queue:
        schedules = schedules.filter(definition__queue__name=rule.queue)
    late = timedelta(seconds=rule.threshold) if rule.threshold is not None else None
    firings = {}
    for schedule in schedules.only("id", "name")[:1000]:
        run = (
            JobScheduleRun.objects.filter(schedule=schedule, fired_at__gte=rule.created_at)
            .order_by("-due_at")
            .first()
        )
        if run is None:
            continue
        reasons = []
        if run.outcome != ScheduleRunOutcome.SUBMITTED:
            reasons.append(run.get_outcome_display().lower())
        if run.missed:
            reasons.append(f"{run.missed} due times missed")
        if late is not None and run.fired_at - run.due_at > late:
            reasons.append(f"fired {(run.fired_at - run.due_at).total_seconds():.1f} s late")
        if reasons:
            firings[f"schedule:{schedule.pk}"] = Firing(
                f"schedule {schedule.name} at {run.due_at.isoformat()}: {'; '.join(reasons)}",
                {"schedule": schedule.pk, "schedule_name": schedule.name},
            )
    return firings


def queue_backlog_age(rule: AlertRule, now: datetime) -> dict[str, Firing]:
    due = _jobs(rule).filter(
        Q(not_before__isnull=True) | Q(not_before__lte=now), status=JobStatus.PENDING
    )
    oldest = (
        due.values("queue__name")
        .annotate(since=Min(Greatest("created_at", Coalesce("not_before", "created_at"))))
        .filter(since__lt=now - timedelta(seconds=rule.threshold))
    )
    return {
        f"queue:{row['queue__name']}": Firing(
            f"queue {row['queue__name']}: a job has waited "
            f"{(now - row['since']).total_seconds():.0f} s",
            {"queue": row["queue__name"]},
        )
        for row in oldest
    }


def failure_ratio(rule: AlertRule, now: datetime) -> dict[str, Firing]:
    """Failed and lost attempts over the attempts that ended in the window, cancelled ones
    left out (as in the metrics summary)."""
    ended = JobExecution.objects.filter(
        job__in=_jobs(rule),
        finished_at__gte=now - timedelta(seconds=rule.window_seconds),
        status__in=(ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.LOST),
    ).aggregate(
        total=Count("id"),
        bad=Count("id", filter=Q(status__in=(ExecutionStatus.FAILED, ExecutionStatus.LOST))),
    )
    if not ended["total"]:
        return {}
    ratio = ended["bad"] / ended["total"]
    if ratio <= rule.threshold:
        return {}
    return {
        "ratio": Firing(
            f"{ended['bad']} of {ended['total']} attempts failed in the last "
            f"{rule.window_seconds} s ({ratio:.0%} > {rule.threshold:.0%})",
            {"failed": ended["bad"], "ended": ended["total"], "ratio": round(ratio, 4)},
        )
    }


def node_offline(rule: AlertRule, now: datetime) -> dict[str, Firing]:
    nodes = Node.objects.filter(status=NodeStatus.OFFLINE)
    if rule.name_pattern:
        nodes = nodes.filter(name__regex=glob_regex(rule.name_pattern))
    return {
        f"node:{node_id}": Firing(
            f"node {name} is offline (last heard from {beat.isoformat() if beat else 'never'})",
            {"node": node_id, "node_name": name},
        )
        for node_id, name, beat in nodes.values_list("id", "name", "last_heartbeat")[:1000]
    }


CONDITIONS = {
    Condition.JOB_DEAD_LETTERED: job_dead_lettered,
    Condition.JOB_RETRYING: job_retrying,
    Condition.JOB_RUNNING_LONGER: job_running_longer,
    Condition.SCHEDULE_MISSED: schedule_missed,
    Condition.QUEUE_BACKLOG_AGE: queue_backlog_age,
    Condition.FAILURE_RATIO: failure_ratio,
    Condition.NODE_OFFLINE: node_offline,
    Condition.JOB_DEADLINE_PASSED: job_deadline_passed,
}


def condition_firings(rule: AlertRule, now: datetime) -> dict[str, Firing]:
    return CONDITIONS[rule.condition](rule, now)
