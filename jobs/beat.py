"""Beat's scheduler (CELERY_BEAT_SCHEDULER): job schedules fired from their due times
in PostgreSQL, the other periodic tasks as django-celery-beat's DatabaseScheduler runs them.

DatabaseScheduler keeps an entry per schedule in memory, compares them all on every
fire and reloads them all whenever any entry changes, so its cost per fire grows with
the number of schedules. Here each tick reads only what is due (the partial index on
JobSchedule.next_fire_at), sends those ids to the control worker a batch to a message,
and sleeps until the next due time. The trigger moves next_fire_at on; beat writes
nothing. A change to a schedule is seen at the next tick, with nothing to reload.
"""

import logging
import time
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, InterfaceError, close_old_connections
from django.utils import timezone
from django_celery_beat.schedulers import DatabaseScheduler

from .schedules import FIRE_BATCH_TASK, FIRE_TASK, schedules_due

logger = logging.getLogger(__name__)

# Interval schedules shorter than this are sent ahead of the others: they are due again
# soon, while a cron that fires hourly can wait behind them for a moment.
SOON_AGAIN_SECONDS = 60
# Beat's priority for the others (Redis: 0, the default, is served first).
LATER_PRIORITY = 6
# While sent due times wait for the trigger, beat looks this often for their next ones.
IN_FLIGHT_POLL_SECONDS = 0.02
# ...for at most this long after sending them.
IN_FLIGHT_POLL_FOR_SECONDS = 3.0


class ScheduleBeat(DatabaseScheduler):
    def __init__(self, *args, **kwargs):
        # Schedule id -> (the due time sent for, when it was sent): a due time stays due
        # until the trigger has run, and is sent again only if that takes too long (a
        # message lost with Redis, a control worker that was down).
        self._sent: dict[int, tuple] = {}
        super().__init__(*args, **kwargs)

    def enabled_models_qs(self):
        """The job schedules' own entries are left to tick() (they stay in the database
        for a beat run with the stock DatabaseScheduler, whose fires are harmless twins)."""
        return super().enabled_models_qs().exclude(task=FIRE_TASK)

    def tick(self, *args, **kwargs):
        schedules_wait = self.fire_due_schedules()
        return min(super().tick(*args, **kwargs), schedules_wait)

    def fire_due_schedules(self) -> float:
        """Send what is due; return how long until beat should look again: the next due
        time, soon while sent ones wait for their trigger, at most max_interval."""
        now = timezone.now()
        try:
            close_old_connections()
            due = schedules_due(until=now + timedelta(seconds=self.max_interval))
        except (DatabaseError, InterfaceError):
            logger.exception("beat could not read the due schedules; trying again")
            return self.max_interval
        sent, self._sent = self._sent, {}
        soon, later = [], []
        later_in_flight = 0
        wait = self.max_interval
        clock = time.monotonic()
        for schedule_id, due_at, interval in due:
            if due_at > now:
                wait = min(wait, (due_at - now).total_seconds())
                break
            quick = interval is not None and interval < SOON_AGAIN_SECONDS
            previous = sent.get(schedule_id)
            if previous and previous[0] == due_at:
                self._sent[schedule_id] = previous
                in_flight = clock - previous[1]
                if in_flight < settings.SCHEDULE_FIRE_RESEND_SECONDS:
                    later_in_flight += not quick
                    if in_flight < IN_FLIGHT_POLL_FOR_SECONDS:
                        wait = min(wait, IN_FLIGHT_POLL_SECONDS)
                    continue
            (soon if quick else later).append((schedule_id, due_at))
        # The others go a few batches at a time, as the control worker takes them, so
        # that no backlog of them stands in the broker ahead of a quick one's next fire.
        room = max(settings.SCHEDULE_FIRE_IN_FLIGHT_MAX - later_in_flight, 0)
        if len(later) > room:
            later = later[:room]
            wait = min(wait, IN_FLIGHT_POLL_SECONDS)
        for schedule_id, due_at in soon + later:
            self._sent[schedule_id] = (due_at, clock)
        self._send([schedule_id for schedule_id, _ in soon], priority=None)
        self._send([schedule_id for schedule_id, _ in later], priority=LATER_PRIORITY)
        if soon or later:
            wait = min(wait, IN_FLIGHT_POLL_SECONDS)
        return max(wait, 0.0)

    def _send(self, schedule_ids: list[int], *, priority: int | None) -> None:
        size = settings.SCHEDULE_FIRE_BATCH_SIZE
        for batch in (schedule_ids[i : i + size] for i in range(0, len(schedule_ids), size)):
            try:
                self.app.send_task(
                    FIRE_BATCH_TASK,
                    kwargs={"schedule_ids": batch},
                    producer=self.producer,
                    priority=priority,
                )
            except Exception:
                # Forget them: the next tick sends them again.
                for schedule_id in batch:
                    self._sent.pop(schedule_id, None)
                logger.exception("beat could not send schedules %s", batch)
        if schedule_ids:
            logger.info("beat sent schedules count=%d priority=%s", len(schedule_ids), priority)
