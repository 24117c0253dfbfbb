"""Writes for resources: queues. (Allocations and node counters change with the
executions that hold them, in `jobs.accounting`.)"""

import logging

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import ProtectedError

from accounts.models import Team
from common.wakeup import scheduler_wake

from .models import DEFAULT_QUEUE_NAME, PlacementStrategy, Queue

logger = logging.getLogger(__name__)


def _queue_save(queue: Queue, *, teams: list[Team] | None) -> Queue:
    if teams and queue.all_teams:
        raise ValidationError({"teams": ["A queue open to all teams lists none."]})
    queue.full_clean(exclude=["teams"])
    with transaction.atomic():
        queue.save()
        if teams is not None:
            queue.teams.set(teams)
        # A new weight, quota or priority may let waiting jobs start.
        scheduler_wake()
    return queue


def queue_create(
    *,
    name: str,
    all_teams: bool = False,
    teams: list[Team] | None = None,
    weight: int = 1,
    priority: int = 0,
    strategy: str = PlacementStrategy.BINPACK,
    quota_cpu_millis: int | None = None,
    quota_memory_mb: int | None = None,
    quota_gpu: int | None = None,
    default_timeout_seconds: int | None = None,
    preemptible_default: bool = False,
    preemption_grace_seconds: int | None = None,
) -> Queue:
    queue = Queue(
        name=name,
        all_teams=all_teams,
        weight=weight,
        priority=priority,
        strategy=strategy,
        quota_cpu_millis=quota_cpu_millis,
        quota_memory_mb=quota_memory_mb,
        quota_gpu=quota_gpu,
        default_timeout_seconds=default_timeout_seconds,
        preemptible_default=preemptible_default,
        preemption_grace_seconds=preemption_grace_seconds,
    )
    queue = _queue_save(queue, teams=teams or [])
    logger.info("queue created queue=%s", queue.name)
    return queue


QUEUE_FIELDS = (
    "name",
    "all_teams",
    "weight",
    "priority",
    "strategy",
    "quota_cpu_millis",
    "quota_memory_mb",
    "quota_gpu",
    "default_timeout_seconds",
    "preemptible_default",
    "preemption_grace_seconds",
)


def queue_update(*, queue: Queue, teams: list[Team] | None = None, **changes) -> Queue:
    """Change the given fields (any of QUEUE_FIELDS) and, when given, the teams.

    Jobs already running keep running when a quota goes down; no new ones start until
    the queue is back under it.
    """
    unknown = set(changes) - set(QUEUE_FIELDS)
    if unknown:
        raise TypeError(f"not queue fields: {sorted(unknown)}")
    if queue.name == DEFAULT_QUEUE_NAME and changes.get("name", queue.name) != queue.name:
        raise ValidationError({"name": ["The default queue keeps its name."]})
    for field, value in changes.items():
        setattr(queue, field, value)
    if teams is None and queue.all_teams and queue.teams.exists():
        teams = []  # opened to every team: the list no longer means anything
    queue = _queue_save(queue, teams=teams)
    logger.info("queue updated queue=%s fields=%s", queue.name, sorted(changes))
    return queue


def queue_delete(*, queue: Queue) -> None:
    """Delete a queue no job or definition was ever submitted to; never the default."""
    if queue.name == DEFAULT_QUEUE_NAME:
        raise ValidationError("The default queue cannot be deleted.")
    try:
        queue.delete()
    except ProtectedError as exc:
        raise ValidationError(
            f"Queue {queue.name} has jobs or definitions; it cannot be deleted."
        ) from exc
    logger.info("queue deleted queue=%s", queue.name)
