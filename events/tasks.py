"""The retention purge, run by beat on the control worker."""

from celery import shared_task
from django.conf import settings

from .services import events_purge


@shared_task(name="events.purge_events", ignore_result=True)
def purge_events() -> int:
    return events_purge(older_than_days=settings.EVENT_RETENTION_DAYS)
