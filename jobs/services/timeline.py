"""A job's and a schedule's events (`events.Event`), recorded by the services in the
transaction of the change they tell of. Placements, claims and successes write theirs in
their own statements (`jobs.accounting`)."""

from events.models import Event, EventType
from events.services import event_record, events_record

from ..models import Job, JobScheduleRun, JobStatus, ScheduleRunOutcome


def job_event(
    job: Job,
    type: EventType,
    message: str,
    *,
    attempt: int | None = None,
    node_id: int | None = None,
    actor: str = "",
    data: dict | None = None,
    at=None,
) -> None:
    event_record(
        type=type,
        message=message,
        team_id=job.team_id,
        job_id=job.id,
        node_id=node_id,
        attempt=attempt,
        actor=actor,
        data=data,
        at=at,
    )


def jobs_submitted_events(jobs, message, *, actor: str = "") -> None:
    """The submitted events of jobs made together (a workflow's steps, an array's tasks,
    a schedule's batch), in one INSERT; `message` is a function of the job."""
    events_record(
        Event(
            type=EventType.JOB_SUBMITTED,
            message=message(job),
            team_id=job.team_id,
            job_id=job.id,
            actor=actor,
            at=job.created_at,
        )
        for job in jobs
    )


def jobs_cancelled_events(reasons: dict[int, str], *, at) -> None:
    """The cancelled events of jobs cancelled together ({job id: reason}), in one INSERT."""
    teams = dict(Job.objects.filter(pk__in=reasons).values_list("pk", "team_id"))
    events_record(
        Event(
            type=EventType.JOB_CANCELLED,
            message=reason,
            team_id=teams[job_id],
            job_id=job_id,
            data={"reason": reason},
            at=at,
        )
        for job_id, reason in reasons.items()
    )


def job_ended_event(job: Job, *, reason: str = "", actor: str = "", at=None) -> None:
    """The event of a job that has just ended (`job.status` is its new status)."""
    if job.status == JobStatus.SUCCEEDED:
        job_event(job, EventType.JOB_SUCCEEDED, "succeeded", attempt=job.attempts, at=at)
    elif job.status == JobStatus.CANCELLED:
        by = f" by {actor}" if actor else ""
        job_event(
            job,
            EventType.JOB_CANCELLED,
            job.cancel_reason or f"cancelled{by}",
            actor=actor,
            data={"reason": job.cancel_reason} if job.cancel_reason else None,
            at=at,
        )
    elif job.status == JobStatus.FAILED:
        job_event(
            job,
            EventType.JOB_DEAD_LETTERED,
            f"failed for good after {job.attempts} attempts: {reason}",
            attempt=job.attempts,
            data={"reason": reason},
            at=at,
        )


_RUN_EVENTS = {
    ScheduleRunOutcome.SKIPPED_RUNNING: EventType.SCHEDULE_SKIPPED,
    ScheduleRunOutcome.SKIPPED_MISFIRE: EventType.SCHEDULE_MISSED,
    ScheduleRunOutcome.SUBMIT_FAILED: EventType.SCHEDULE_SUBMIT_FAILED,
}


def schedule_runs_events(runs: list[JobScheduleRun]) -> None:
    """The events of what schedules did at their due times, from their run rows, in one
    INSERT: a fire, a catch-up or a backfill that submitted, a skip, a miss, a failure."""
    events_record(_schedule_run_event(run) for run in runs)


def _schedule_run_event(run: JobScheduleRun) -> Event:
    schedule = run.schedule
    due = run.due_at.isoformat()
    late_seconds = round((run.fired_at - run.due_at).total_seconds(), 3)
    if run.outcome in (ScheduleRunOutcome.SUBMITTED, ScheduleRunOutcome.BACKFILLED):
        type = EventType.SCHEDULE_CAUGHT_UP if run.catch_up else EventType.SCHEDULE_FIRED
        if run.outcome == ScheduleRunOutcome.BACKFILLED:
            what = "backfilled"
        else:
            what = f"caught up ({run.missed} missed)" if run.catch_up else "fired"
        made = f"workflow {run.workflow_id}" if run.workflow_id else f"job {run.job_id}"
        message = f"{what} for {due}: {made} submitted, {late_seconds} s late"
    else:
        type = _RUN_EVENTS[run.outcome]
        message = f"{run.get_outcome_display().lower()} at {due}"
        if run.error:
            message += f": {run.error}"
    return Event(
        type=type,
        message=message,
        team_id=schedule.team_id,
        schedule_id=schedule.pk,
        job_id=run.job_id,
        at=run.fired_at,
        data={
            "due_at": due,
            "outcome": run.outcome,
            "missed": run.missed,
            "late_seconds": late_seconds,
            "schedule": schedule.name,
        },
    )
