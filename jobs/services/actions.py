"""What people do to jobs: cancel, requeue (retry), hold and release, acknowledge a dead
letter, and release the allocation of an execution that is stuck."""

import logging

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from common.wakeup import scheduler_wake
from events.models import EventType

from ..accounting import allocation_release
from ..models import (
    HELD_REASONS,
    TERMINAL_JOB_STATUSES,
    ExecutionStatus,
    Job,
    JobExecution,
    JobStatus,
    PendingReason,
)
from .array_slots import array_slots_release, array_task_ended
from .dependencies import dependents_rearm, workflows_refresh
from .gangs import gang_task_ended
from .publishing import stop_checks_publish_on_commit
from .retries import (
    JOB_LIFECYCLE_FIELDS,
    job_after_attempt,
    job_end,
    job_ended_settle,
    job_plan_retry,
)
from .timeline import job_ended_event, job_event

logger = logging.getLogger(__name__)


class JobStateError(ValidationError):
    """The job is not in a state that allows the action; answered as a 400 on `status`."""

    def __init__(self, message: str):
        super().__init__({"status": [message]})


def job_cancel(*, job: Job, user: User | None = None, reason: str = "") -> Job:
    """Cancel a job. Pending or placed-but-unstarted: at once. Running: its node is asked
    to kill the process group, and the job becomes `cancelled` when the node confirms
    (or when the node is found lost). `reason` is kept as the job's cancel reason."""
    now = timezone.now()
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if job.status in TERMINAL_JOB_STATUSES:
            raise JobStateError(
                f"The job already ended ({job.status}); there is nothing to cancel."
            )
        job.cancel_reason = cancel_reason(reason=reason, user=user)
        if job.status == JobStatus.RESERVED or (job.status == JobStatus.RUNNING and job.tasks > 1):
            # Every execution of the attempt (a gang's tasks), locked so that a claim
            # racing for one has either run (it is running) or finds it cancelled.
            attempt = JobExecution.objects.filter(job=job, attempt=job.attempts)
            unstarted = list(
                attempt.filter(status=ExecutionStatus.RESERVED)
                .select_for_update()
                .values_list("id", flat=True)
            )
            attempt.filter(id__in=unstarted).update(
                status=ExecutionStatus.CANCELLED, error="cancelled", finished_at=now
            )
            for execution_id in unstarted:
                allocation_release(execution_id=execution_id, now=now)
            if attempt.filter(status=ExecutionStatus.RUNNING).exists():
                # Claimed (meanwhile): its node stops it.
                job.cancel_requested_at = job.cancel_requested_at or now
            else:
                job_end(job, JobStatus.CANCELLED, now)
        elif job.status == JobStatus.PENDING:
            job_end(job, JobStatus.CANCELLED, now)
            job.not_before = None
        else:
            job.cancel_requested_at = job.cancel_requested_at or now
        job.save(update_fields=[*JOB_LIFECYCLE_FIELDS, "cancel_requested_at", "cancel_reason"])
        job_ended_settle(job, now=now)
        array_task_ended(job)
        who = user.username if user else ""
        if job.status == JobStatus.CANCELLED:
            job_ended_event(job, actor=who, at=now)
        else:
            stop_checks_publish_on_commit(
                node_names=JobExecution.objects.filter(
                    job=job, attempt=job.attempts, status=ExecutionStatus.RUNNING
                ).values_list("node__name", flat=True)
            )
            by = f" by {who}" if who else ""
            job_event(
                job,
                EventType.JOB_CANCEL_REQUESTED,
                f"cancel requested{by}; its node stops it",
                attempt=job.attempts,
                actor=who,
                at=now,
            )
        scheduler_wake()
    logger.info(
        "job cancel job=%s by=%s status=%s", job.id, user.username if user else "-", job.status
    )
    return job


def cancel_reason(*, reason: str, user: User | None) -> str:
    """What a cancel records as its reason: the one given, else who asked."""
    return reason or (f"cancelled by {user.username}" if user else "cancelled")


def job_requeue(*, job: Job, user: User | None = None) -> Job:
    """Run a failed or cancelled job again, as its next attempt, right away."""
    now = timezone.now()
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            raise JobStateError(
                f"Only a failed or cancelled job can be requeued; this one is {job.status}."
            )
        who = user.username if user else "an operator"
        job_plan_retry(
            job=job, reason=f"requeued by {who}", delay_seconds=0, now=now, requested_by=user
        )
        job.acknowledged_at = job.cancel_requested_at = None
        job.cancel_reason = ""
        job.save(
            update_fields=[
                *JOB_LIFECYCLE_FIELDS,
                "acknowledged_at",
                "cancel_requested_at",
                "cancel_reason",
            ]
        )
        # The dependents it had cancelled wait for it again.
        dependents_rearm(job=job)
        if job.workflow_id is not None:
            workflows_refresh(workflow_ids=[job.workflow_id], now=now)
        scheduler_wake()
    return job


def job_hold_refusal(job: Job) -> str | None:
    """Why `job` cannot be held as it is now, or None when it can."""
    if job.array_count is not None:
        if job.status in TERMINAL_JOB_STATUSES:
            return f"The array job already ended ({job.status})."
        if job.cancel_requested_at is not None:
            return "The array job is being cancelled."
        if job.held_at is not None:
            return "The array job is already held."
        return None
    if job.status != JobStatus.PENDING:
        return f"Only a pending job can be held; this one is {job.status}."
    if job.pending_reason == PendingReason.HELD:
        return "The job is already held."
    if job.pending_reason in HELD_REASONS:
        return (
            f"The job is {job.get_pending_reason_display().lower()}: it can be held once "
            "that is over, or cancelled."
        )
    return None


def job_hold(*, job: Job, user: User | None = None) -> Job:
    """Keep a pending job from being placed until someone releases it (Slurm's `scontrol
    hold`). It keeps its place in its queue's order; room reserved for it, or being made
    for it by preemption, goes to the others. A job the scheduler is placing at this
    moment is locked by its cycle: the hold waits for it, then finds the job placed. An
    array job is held whole (`_array_hold`)."""
    if job.array_count is not None:
        return _array_hold(array=job, user=user)
    now = timezone.now()
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if refusal := job_hold_refusal(job):
            raise JobStateError(refusal)
        job.pending_reason = PendingReason.HELD
        job.reservation_node = job.reservation_start_at = job.reservation_nodes = None
        job.save(
            update_fields=[
                "pending_reason",
                "reservation_node",
                "reservation_start_at",
                "reservation_nodes",
            ]
        )
        who = user.username if user else ""
        by = f" by {who}" if who else ""
        job_event(job, EventType.JOB_HELD, f"held{by}", actor=who, at=now)
        scheduler_wake()  # room reserved or made for it may go to others now
    logger.info("job held job=%s by=%s", job.id, user.username if user else "-")
    return job


def job_release_refusal(job: Job) -> str | None:
    """Why `job` cannot be released as it is now, or None when it can."""
    if job.array_count is not None:
        held = job.held_at is not None
        return None if held else f"Only a held job can be released; this one is {job.status}."
    if job.pending_reason != PendingReason.HELD:  # held is a reason of pending jobs only
        return f"Only a held job can be released; this one is {job.status}."
    if job.array_parent_id is not None and (
        Job.objects.filter(pk=job.array_parent_id, held_at__isnull=False).exists()
    ):
        return f"Its array job {job.array_parent_id} is held: release the array job."
    return None


def job_release(*, job: Job, user: User | None = None) -> Job:
    """Let a held job be placed again, in its old place in its queue's order (a failed
    attempt's retry still waits for its time). An array job is released whole
    (`_array_release`); a task of a held array only with it."""
    if job.array_count is not None:
        return _array_release(array=job, user=user)
    now = timezone.now()
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if refusal := job_release_refusal(job):
            raise JobStateError(refusal)
        job.pending_reason = _released_reason(job, now)
        job.save(update_fields=["pending_reason"])
        who = user.username if user else ""
        by = f" by {who}" if who else ""
        job_event(job, EventType.JOB_RELEASED, f"released{by}", actor=who, at=now)
        scheduler_wake()
    logger.info("job released job=%s by=%s", job.id, user.username if user else "-")
    return job


def _released_reason(job: Job, now) -> str:
    """A released job waits for the scheduler, or for its retry time if a failed
    attempt's back-off has not run out."""
    retrying = job.attempts > 0 and job.not_before is not None and job.not_before > now
    return PendingReason.WAITING_RETRY if retrying else PendingReason.NONE


# A held array's tasks that would be placed (not waiting for a slot, nor held already):
# held too, in one statement, after the array's hold has committed (no slot is released
# from then on). It locks the tasks only, in a finish's order (task, then array), and
# waits for a task a cycle is placing, then finds it placed.
ARRAY_TASKS_HOLD_SQL = """
UPDATE jobs_job SET pending_reason = %(held)s, reservation_node_id = NULL,
       reservation_start_at = NULL, reservation_nodes = NULL
 WHERE array_parent_id = %(array)s AND status = %(pending)s
   AND pending_reason <> ALL(%(kept)s)
"""


def _array_hold(*, array: Job, user: User | None) -> Job:
    """Hold an array job whole: no task waiting for a slot gets one, and its tasks that
    would be placed are held (`held`), until the array is released. Running tasks run on.
    Two transactions: the array's mark first, so that no finish releases a task for a
    slot from then on, then its tasks, locked in a finish's order."""
    now = timezone.now()
    who = user.username if user else ""
    with transaction.atomic():
        array = Job.objects.select_for_update().get(pk=array.pk)
        if refusal := job_hold_refusal(array):
            raise JobStateError(refusal)
        array.held_at = now
        array.save(update_fields=["held_at"])
    with transaction.atomic(), transaction.get_connection().cursor() as cursor:
        cursor.execute(
            ARRAY_TASKS_HOLD_SQL,
            {
                "held": PendingReason.HELD,
                "array": array.pk,
                "pending": JobStatus.PENDING,
                "kept": list(HELD_REASONS),
            },
        )
        held = cursor.rowcount
        by = f" by {who}" if who else ""
        message = f"held{by}: {held} task(s) held, and none is released for a slot"
        job_event(array, EventType.JOB_HELD, message, actor=who, at=now, data={"tasks": held})
        scheduler_wake()
    logger.info("array held job=%s tasks=%s by=%s", array.pk, held, who or "-")
    return array


def _array_release(*, array: Job, user: User | None) -> Job:
    """Release a held array job: its held tasks wait for a slot again, and as many as
    its parallelism has room for are released at once, in index order (a retry then
    waits for its time). Tasks first, then the array, in a finish's order."""
    now = timezone.now()
    who = user.username if user else ""
    with transaction.atomic():
        tasks = Job.objects.filter(
            array_parent_id=array.pk, status=JobStatus.PENDING, pending_reason=PendingReason.HELD
        )
        tasks.update(pending_reason=PendingReason.WAITING_ARRAY_SLOT)
        array = Job.objects.select_for_update().get(pk=array.pk)
        if refusal := job_release_refusal(array):
            raise JobStateError(refusal)
        array.held_at = None
        array.save(update_fields=["held_at"])
        released = array_slots_release(array_ids=[array.pk])
        Job.objects.filter(id__in=released, attempts__gt=0, not_before__gt=now).update(
            pending_reason=PendingReason.WAITING_RETRY
        )
        by = f" by {who}" if who else ""
        job_event(
            array,
            EventType.JOB_RELEASED,
            f"released{by}: {len(released)} task(s) released for their slots",
            actor=who,
            at=now,
            data={"tasks": len(released)},
        )
    logger.info("array released job=%s tasks=%s by=%s", array.pk, len(released), who or "-")
    return array


def job_acknowledge(*, job: Job, user: User | None = None) -> Job:
    """Take a failed job out of the dead-letter view without running it again."""
    with transaction.atomic():
        updated = Job.objects.dead_letter().filter(pk=job.pk).update(acknowledged_at=timezone.now())
        if updated:
            who = user.username if user else ""
            by = f" by {who}" if who else ""
            job_event(job, EventType.JOB_ACKNOWLEDGED, f"acknowledged{by}", actor=who)
    job.refresh_from_db()
    if not updated and job.status != JobStatus.FAILED:
        raise JobStateError(f"Only a failed job can be acknowledged; this one is {job.status}.")
    return job


def execution_release_stuck(*, execution_id: int, released_by: str) -> bool:
    """An operator releases the allocation of an execution that is stuck (its message is
    lost for good, or its agent is wedged): the allocation is released, exactly once; the
    execution, if not over, ends `failed` with an error saying so; and the job moves on as
    after any failed attempt (a retry if it has retries left, `cancelled` if a cancel was
    asked for).

    False, and nothing changes, when the allocation was already released. A process still
    running on the node is not stopped; its outcome is ignored when it reports.
    """
    now = timezone.now()
    error = f"allocation released by {released_by}: the execution was stuck"
    with transaction.atomic():
        job_id = JobExecution.objects.filter(pk=execution_id).values_list("job_id", flat=True)
        job = Job.objects.select_for_update().filter(pk__in=job_id).first()
        if job is None:
            return False
        ended = JobExecution.objects.filter(
            pk=execution_id, status__in=(ExecutionStatus.RESERVED, ExecutionStatus.RUNNING)
        ).update(status=ExecutionStatus.FAILED, error=error, finished_at=now)
        attempt = JobExecution.objects.filter(pk=execution_id).values_list("attempt", flat=True)
        if ended and job.tasks > 1:
            gang_task_ended(
                job, attempt=attempt.get(), status=ExecutionStatus.FAILED, error=error, now=now
            )
        elif ended and job.last_execution_id == execution_id:
            cancelled = job.cancel_requested_at is not None
            status = ExecutionStatus.CANCELLED if cancelled else ExecutionStatus.FAILED
            job_after_attempt(job, status=status, error=error, now=now)
        # Last, as in a finish, so the node row is held briefly.
        released = allocation_release(execution_id=execution_id, now=now)
        if not (ended or released):
            return False
        array_task_ended(job)
        scheduler_wake()
    logger.warning(
        "allocation released by an operator job=%s execution=%s by=%s job_status=%s",
        job.id,
        execution_id,
        released_by,
        job.status,
    )
    return True
