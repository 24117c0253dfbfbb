"""Job arrays: one submission, `count` tasks of one spec, at most `parallelism` running
at once.

The array job holds the spec and the figures and is never placed itself; its tasks are
jobs (`array_parent`, `array_index`, JOB_ARRAY_INDEX in their environment) that reuse
placement, retries, cancel and logs. Tasks past the first `parallelism` wait held
(`waiting_array_slot`); `jobs.services.array_slots` releases the next one in the
transaction that frees a slot, and ends the array job once all its tasks have ended.
"""

import contextlib
import logging

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.models import User

from ..models import TERMINAL_JOB_STATUSES, Job, JobStatus, PendingReason
from .actions import JobStateError, cancel_reason, job_cancel
from .array_slots import array_slots_release
from .retries import JOB_LIFECYCLE_FIELDS, job_plan_retry
from .timeline import jobs_submitted_events

logger = logging.getLogger(__name__)

MAX_ARRAY_COUNT = 10_000
REOPENED_FIELDS = ["acknowledged_at", "cancel_requested_at", "cancel_reason"]
ARRAY_INDEX_ENV = "JOB_ARRAY_INDEX"


def array_tasks_create(*, array: Job, count: int, parallelism: int) -> None:
    """The array job's tasks, in the caller's transaction: the first `parallelism` ready
    for the scheduler (held, if the array is), the others waiting for a slot."""
    own = {"id", "created_at", "status", "pending_reason", "started_at", "idempotency_key"}
    spec = {
        f.attname: getattr(array, f.attname)
        for f in Job._meta.concrete_fields
        if f.attname not in {*own, "held_at"} and not f.attname.startswith("array_")
    }
    first = PendingReason.HELD if array.held_at is not None else PendingReason.NONE
    tasks = Job.objects.bulk_create(
        [
            Job(
                **{
                    **spec,
                    "name": f"{array.name}[{index}]",
                    "env": {**array.env, ARRAY_INDEX_ENV: str(index)},
                    "array_parent_id": array.id,
                    "array_index": index,
                    "pending_reason": first
                    if index < parallelism
                    else PendingReason.WAITING_ARRAY_SLOT,
                }
            )
            for index in range(count)
        ],
        batch_size=1000,
    )
    jobs_submitted_events(
        tasks, lambda task: f"submitted as task {task.array_index} of array job {array.id}"
    )


def _require_array(job: Job) -> None:
    if job.array_count is None:
        raise ValidationError({"array": ["The job is not an array job."]})


def array_parallelism_set(*, array: Job, parallelism: int, user: User | None = None) -> Job:
    """Change how many tasks may run at once. Raising it releases held tasks at once;
    lowering it stops releasing until fewer run (nothing running is stopped)."""
    _require_array(array)
    with transaction.atomic():
        array = Job.objects.select_for_update().get(pk=array.pk)
        if array.status in TERMINAL_JOB_STATUSES:
            raise JobStateError(f"The array job already ended ({array.status}).")
        array.array_parallelism = parallelism
        array.save(update_fields=["array_parallelism"])
        array_slots_release(array_ids=[array.pk])
    logger.info(
        "array parallelism set job=%s parallelism=%s by=%s",
        array.pk,
        parallelism,
        user.username if user else "-",
    )
    return array


def array_cancel(*, array: Job, user: User | None = None, reason: str = "") -> Job:
    """Cancel the array job: no task is released any more, and every task that has not
    ended is cancelled (a running one when its node confirms). Each task is cancelled in
    a transaction of its own, which takes its locks in a finish's order (task, node,
    array); the last task to end ends the array job, cancelled."""
    _require_array(array)
    now = timezone.now()
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=array.pk)
        if locked.status in TERMINAL_JOB_STATUSES:
            raise JobStateError(f"The job already ended ({locked.status}); nothing to cancel.")
        if locked.cancel_requested_at is None:
            locked.cancel_requested_at = now
            locked.cancel_reason = cancel_reason(reason=reason, user=user)
            locked.save(update_fields=["cancel_requested_at", "cancel_reason"])
    live = array.array_tasks.exclude(status__in=TERMINAL_JOB_STATUSES).order_by("array_index")
    for task in live:
        with contextlib.suppress(JobStateError):  # it ended meanwhile
            job_cancel(job=task, user=user, reason=reason)
    with transaction.atomic():
        array_slots_release(array_ids=[array.pk])  # ends it if no task is left running
    logger.info("array cancel job=%s by=%s", array.pk, user.username if user else "-")
    return Job.objects.get(pk=array.pk)


def array_retry(
    *, array: Job, failed_only: bool = False, task: Job | None = None, user: User | None = None
) -> Job:
    """Run the array's failed tasks again (and its cancelled ones, unless `failed_only`;
    or just `task`), each as its next attempt, held for a slot like any task; the array
    runs again."""
    _require_array(array)
    statuses = [JobStatus.FAILED] if failed_only else [JobStatus.FAILED, JobStatus.CANCELLED]
    now = timezone.now()
    who = user.username if user else "an operator"
    with transaction.atomic():
        tasks = array.array_tasks.select_for_update().filter(status__in=statuses)
        tasks = list((tasks if task is None else tasks.filter(pk=task.pk)).order_by("id"))
        array = Job.objects.select_for_update().get(pk=array.pk)
        if not tasks:
            raise JobStateError(
                f"Only a failed or cancelled task can be requeued; this one is {task.status}."
                if task is not None
                else "No task of the array has failed."
                if failed_only
                else "No task of the array has failed or been cancelled."
            )
        for task in tasks:
            job_plan_retry(
                job=task,
                reason=f"array retry by {who}",
                delay_seconds=0,
                now=now,
                requested_by=user,
            )
            task.pending_reason, task.not_before = PendingReason.WAITING_ARRAY_SLOT, None
            task.acknowledged_at = task.cancel_requested_at = None
            task.cancel_reason = ""
            task.save(update_fields=[*JOB_LIFECYCLE_FIELDS, *REOPENED_FIELDS])
        array.status, array.finished_at = JobStatus.RUNNING, None
        array.acknowledged_at = array.cancel_requested_at = None
        array.cancel_reason = ""
        array.save(update_fields=["status", "finished_at", *REOPENED_FIELDS])
        array_slots_release(array_ids=[array.pk])
    logger.info(
        "array retry job=%s tasks=%s failed_only=%s by=%s",
        array.pk,
        [t.array_index for t in tasks],
        failed_only,
        who,
    )
    return array
