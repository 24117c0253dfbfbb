"""Writing events, and purging those older than the retention.

Services of every app record events here, inside their own transaction, so an event is
committed with the change it tells of, or not at all. The hottest paths (placements,
claims, successes) write theirs in their own SQL statement instead (`jobs.accounting`).
"""

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.db import connection
from django.utils import timezone

from common.db import row_insert

from .models import Event, EventType

logger = logging.getLogger(__name__)


def event_record(
    *,
    type: EventType,
    message: str,
    team_id: int | None = None,
    job_id: int | None = None,
    node_id: int | None = None,
    schedule_id: int | None = None,
    attempt: int | None = None,
    actor: str = "",
    data: dict | None = None,
    at: datetime | None = None,
) -> Event:
    # One event at a time is recorded on hot paths (a submission's, a retry's), so it is
    # inserted by a prepared statement rather than an ORM insert compiled afresh each time.
    return row_insert(
        Event(
            at=at or timezone.now(),
            type=type,
            message=message,
            team_id=team_id,
            job_id=job_id,
            node_id=node_id,
            schedule_id=schedule_id,
            attempt=attempt,
            actor=actor,
            data=data or {},
        )
    )


def events_record(events: Iterable[Event]) -> list[Event]:
    """Several events in one INSERT (their `at` defaults to now)."""
    now = timezone.now()
    events = list(events)
    for event in events:
        event.at = event.at or now
    return Event.objects.bulk_create(events) if events else []


# Rows deleted per statement, so a purge of millions never holds one huge transaction.
PURGE_BATCH = 10_000
_PURGE_SQL = """
DELETE FROM events_event WHERE id IN (
    SELECT id FROM events_event WHERE at < %(before)s ORDER BY at, id LIMIT %(batch)s
)
"""


def events_purge(*, older_than_days: float, now: datetime | None = None) -> int:
    """Delete events older than the retention, in batches; how many were."""
    before = (now or timezone.now()) - timedelta(days=older_than_days)
    purged = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(_PURGE_SQL, {"before": before, "batch": PURGE_BATCH})
            deleted = cursor.rowcount
        purged += deleted
        if deleted < PURGE_BATCH:
            break
    if purged:
        logger.info("events purged count=%s before=%s", purged, before.isoformat())
    return purged
