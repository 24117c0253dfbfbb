"""Changing a job that waits (Slurm's `scontrol update job`): its priority, resources,
queue, node selector, time limit and retries, while it is pending (an array job: its
tasks that have not started). It keeps its place in its queue's order (its submission
time); the scheduler looks at it again as if it had just arrived."""

import json
import logging

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from accounts.models import User
from common.wakeup import scheduler_wake
from events.models import EventType
from resources.models import Queue

from ..models import HELD_REASONS, TERMINAL_JOB_STATUSES, Job, JobStatus, PendingReason
from .actions import JobStateError
from .specs import gang_check, job_queue_for_team, job_request_check_quota, job_spec_limit_errors
from .timeline import job_event

logger = logging.getLogger(__name__)

# What a change may set, in the order its event names them.
CHANGEABLE_FIELDS = (
    "priority",
    "cpu_millis",
    "memory_mb",
    "gpu",
    "queue",
    "node_selector",
    "timeout_seconds",
    "cpu_time_limit_seconds",
    "max_retries",
    "retry_backoff_seconds",
)
REQUEST_FIELDS = ("cpu_millis", "memory_mb", "gpu")
# Reasons a change keeps: whoever holds the job still does, and a retry still waits for
# its time. Any other reason was the scheduler's, about the job as it was.
KEPT_REASONS = (*HELD_REASONS, PendingReason.WAITING_RETRY)


def job_change_refusal(job: Job) -> str | None:
    """Why `job` cannot be changed as it is now, or None when it can."""
    if job.array_count is not None:
        if job.status in TERMINAL_JOB_STATUSES:
            return f"The array job already ended ({job.status})."
        return None
    if job.status != JobStatus.PENDING:
        return f"Only a pending job can be changed; this one is {job.status}."
    return None


def job_change(*, job: Job, changes: dict, user: User | None = None) -> Job:
    """Change a pending job. `changes` holds validated values of CHANGEABLE_FIELDS, with
    `queue` as a queue name and `timeout_seconds` None for the queue's default. A new
    request, queue or node selector is checked as at submission: a queue the team may
    not use, a request no node or quota could ever hold, a gang that could never start
    are 400s that change nothing. A job that has run keeps its queue (what its attempts
    counted for stays where it was counted).

    Room reserved or being made for the job goes to the others, and it waits to be
    looked at again, unless it is held or waits for its retry time. The event says what
    changed, from what, and who changed it. A job the scheduler is placing at this
    moment is locked by its cycle: the change waits for it, then finds the job placed.
    An array job is changed with its tasks (`_array_change`)."""
    if job.array_count is not None:
        return _array_change(array=job, changes=changes, user=user)
    now = timezone.now()
    with transaction.atomic():
        # Its own row only: the queue joined in stays unlocked.
        job = Job.objects.select_for_update(of=("self",)).select_related("queue").get(pk=job.pk)
        if refusal := job_change_refusal(job):
            raise JobStateError(refusal)
        diff = _checked_diff(job, changes, has_run=job.attempts > 0)
        if not diff:
            return job
        for name, (_, value) in diff.items():
            setattr(job, name, value)
        fields = list(diff)
        if job.pending_reason not in KEPT_REASONS:
            job.pending_reason = PendingReason.NONE
            job.reservation_node = job.reservation_start_at = job.reservation_nodes = None
            fields += ["pending_reason", "reservation_node", "reservation_start_at"]
            fields += ["reservation_nodes"]
        job.save(update_fields=fields)
        who = user.username if user else ""
        _changed_event(job, diff, who=who, at=now)
        scheduler_wake()  # it may fit now, and room held for it may go to others
    logger.info("job changed job=%s by=%s fields=%s", job.id, who or "-", ",".join(diff))
    return job


def _array_change(*, array: Job, changes: dict, user: User | None) -> Job:
    """Change an array job and, in the same transaction, its tasks that have not started
    (Slurm's update of an array's pending tasks); running and ended tasks keep what they
    ran with. The tasks are locked before the array, in a finish's order; a task that a
    cycle is placing is waited for, then found placed, and left as it was."""
    now = timezone.now()
    with transaction.atomic():
        array = Job.objects.select_related("queue").get(pk=array.pk)
        if refusal := job_change_refusal(array):
            raise JobStateError(refusal)
        has_run = Job.objects.filter(array_parent_id=array.pk, attempts__gt=0).exists()
        diff = _checked_diff(array, changes, has_run=has_run)
        if not diff:
            return array
        values = {name: new for name, (_, new) in diff.items()}
        tasks = Job.objects.filter(array_parent_id=array.pk, status=JobStatus.PENDING).update(
            **values,
            pending_reason=Case(
                When(pending_reason__in=KEPT_REASONS, then=F("pending_reason")),
                default=Value(PendingReason.NONE),
            ),
            reservation_node=None,
            reservation_start_at=None,
            reservation_nodes=None,
        )
        array = Job.objects.select_for_update(of=("self",)).select_related("queue").get(pk=array.pk)
        if refusal := job_change_refusal(array):  # it ended meanwhile: nothing changes
            raise JobStateError(refusal)
        for name, value in values.items():
            setattr(array, name, value)
        array.save(update_fields=list(values))
        who = user.username if user else ""
        _changed_event(array, diff, who=who, at=now, tasks=tasks)
        scheduler_wake()
    logger.info(
        "array changed job=%s tasks=%s by=%s fields=%s", array.id, tasks, who or "-", ",".join(diff)
    )
    return array


def _checked_diff(job: Job, changes: dict, *, has_run: bool) -> dict[str, tuple]:
    """What `changes` changes of `job`, {field: (old, new)}, each new request, queue and
    selector checked as a submission's (a ValidationError otherwise)."""
    new = {**changes}
    if "queue" in new:
        new["queue"] = _queue_checked(job, new, has_run=has_run)
    if "timeout_seconds" in new and new["timeout_seconds"] is None:
        new["timeout_seconds"] = new.get("queue", job.queue).default_timeout_seconds
    diff = {
        name: (getattr(job, name), new[name])
        for name in CHANGEABLE_FIELDS
        if name in new and getattr(job, name) != new[name]
    }
    if diff.keys() & {*REQUEST_FIELDS, "node_selector"} and "queue" not in diff:
        _request_check(job, {**_request(job), **new}, job.queue)
    return diff


def _changed_event(job: Job, diff: dict, *, who: str, at, tasks: int | None = None) -> None:
    by = f" by {who}" if who else ""
    described = "; ".join(_describe(name, *values) for name, values in diff.items())
    data = {"changes": {name: [_plain(v) for v in values] for name, values in diff.items()}}
    if tasks is not None:
        described += f" ({tasks} task(s) not started)"
        data["tasks"] = tasks
    job_event(job, EventType.JOB_CHANGED, f"changed{by}: {described}", actor=who, data=data, at=at)


def _request(job: Job) -> dict:
    return {name: getattr(job, name) for name in (*REQUEST_FIELDS, "node_selector")}


def _queue_checked(job: Job, new: dict, *, has_run: bool) -> Queue:
    """The queue `new` names, checked with the request and selector the job will have."""
    queue_name = new["queue"]
    if queue_name == job.queue.name:
        return job.queue
    if has_run:
        raise ValidationError(
            {"queue": ["A job that has run keeps its queue: its attempts were counted there."]}
        )
    spec = {**_request(job), **new}
    request = {name: spec[name] for name in REQUEST_FIELDS}
    queue = job_queue_for_team(team=job.team, name=queue_name, request=request)
    _request_check(job, spec, queue)
    return queue


def _request_check(job: Job, spec: dict, queue: Queue) -> None:
    """Refuse a request, in `queue`, that could never run: as job_spec_check does at
    submission, for the parts a change may set."""
    if errors := job_spec_limit_errors(node_selector=spec["node_selector"]):
        raise ValidationError(errors)
    request = {name: spec[name] for name in REQUEST_FIELDS}
    if queue is job.queue:
        job_queue_for_team(team=job.team, name=queue.name, request=request)
    job_request_check_quota(queue=queue, **request)
    if job.tasks > 1:
        gang_check(queue=queue, tasks=job.tasks, request=request, selector=spec["node_selector"])


def _plain(value):
    return value.name if isinstance(value, Queue) else value


def _describe(name: str, old, new) -> str:
    def shown(value):
        value = _plain(value)
        if name == "cpu_millis":
            return f"{value / 1000:g}"
        if name == "node_selector":
            return json.dumps(value, sort_keys=True)
        return "none" if value is None else str(value)

    label = {
        "cpu_millis": "cpu",
        "timeout_seconds": "timeout",
        "cpu_time_limit_seconds": "cpu_time_limit",
    }.get(name, name)
    return f"{label} {shown(old)} → {shown(new)}"
