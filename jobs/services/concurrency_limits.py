"""A team's concurrency limits: at most `max_running` of its jobs with one key placed or
running at once. Placement enforces them (jobs.scheduling.concurrency); a change wakes
the scheduler, since a raised or removed limit may let waiting jobs start."""

import logging

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from accounts.models import Team
from common.wakeup import scheduler_wake

from ..models import ConcurrencyLimit

logger = logging.getLogger(__name__)

KEY_TAKEN = {"key": ["The team already has a concurrency limit for this key."]}


def _limit_save(limit: ConcurrencyLimit) -> ConcurrencyLimit:
    """Save and wake the scheduler; a key taken (meanwhile, too) is a 400 on `key`."""
    try:
        with transaction.atomic():
            limit.save()
            scheduler_wake()
    except IntegrityError:
        taken = ConcurrencyLimit.objects.filter(team=limit.team, key=limit.key)
        if taken.exclude(pk=limit.pk).exists():
            raise ValidationError(KEY_TAKEN) from None
        raise
    logger.info(
        "concurrency limit saved team=%s key=%s max_running=%s",
        limit.team.slug,
        limit.key,
        limit.max_running,
    )
    return limit


def concurrency_limit_create(*, team: Team, key: str, max_running: int) -> ConcurrencyLimit:
    return _limit_save(ConcurrencyLimit(team=team, key=key, max_running=max_running))


def concurrency_limit_update(*, limit: ConcurrencyLimit, fields: dict) -> ConcurrencyLimit:
    """Change a limit's `key` or `max_running`; its team cannot change."""
    for name in ("key", "max_running"):
        if name in fields:
            setattr(limit, name, fields[name])
    return _limit_save(limit)


def concurrency_limit_delete(*, limit: ConcurrencyLimit) -> None:
    with transaction.atomic():
        limit.delete()
        scheduler_wake()
    logger.info("concurrency limit deleted team=%s key=%s", limit.team.slug, limit.key)
