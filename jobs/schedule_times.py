"""When a schedule is due: cron (croniter, in the schedule's time zone), interval, one-off.

Pure functions of a schedule's fields and a moment, shared by the trigger, the API's
preview and validation. Times go in and come out as aware datetimes.
"""

from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import cache
from itertools import islice
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from celery.schedules import crontab
from cron_descriptor import get_description
from croniter import croniter

# How many due times a count of missed runs looks through before it stops counting.
MISSED_COUNT_CAP = 1000
# More than any daylight-saving shift: how far back a cron walk starts (see _cron_after).
DST_MARGIN = timedelta(hours=3)


class ScheduleTimeError(ValueError):
    """A cron expression or time zone that cannot be used, with a message for people."""


def cron_fields(expression: str) -> list[str]:
    return expression.split()


def cron_check(expression: str) -> str:
    """The expression with its fields single-spaced; ScheduleTimeError if beat or croniter
    could not run it. Five fields only: beat's crontab has no seconds field."""
    fields = cron_fields(expression)
    if len(fields) != 5:
        raise ScheduleTimeError(
            f"Five fields (minute hour day-of-month month day-of-week), not {len(fields)}."
        )
    normalized = " ".join(fields)
    if not croniter.is_valid(normalized):
        raise ScheduleTimeError(f"{normalized!r} is not a valid cron expression.")
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        crontab(minute, hour, day_of_week, day_of_month, month_of_year)
    except ValueError as exc:
        raise ScheduleTimeError(
            f"{normalized!r} is not a cron expression beat can run: {exc}"
        ) from exc
    return normalized


@cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def timezone_check(name: str) -> ZoneInfo:
    if name not in _zone_names():
        raise ScheduleTimeError(f"{name!r} is not an IANA time zone (e.g. Europe/Berlin).")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleTimeError(f"{name!r} is not an IANA time zone.") from exc


def describe(schedule) -> str:
    """The schedule in words, e.g. "At 02:30 AM, Monday through Friday (Europe/Berlin)"."""
    if schedule.cron:
        try:
            words = get_description(schedule.cron)
        except Exception:  # a description is a courtesy, never an error
            words = schedule.cron
        return f"{words} ({schedule.timezone})"
    if schedule.interval_seconds is not None:
        seconds = schedule.interval_seconds
        return "Every second" if seconds == 1 else f"Every {seconds} seconds"
    return f"Once, at {schedule.run_at.isoformat()}"


class Timetable:
    """The due times of one schedule, bounded by its start and end (both inclusive)."""

    def __init__(self, schedule):
        self.cron = schedule.cron
        self.zone = ZoneInfo(schedule.timezone) if schedule.cron else None
        self.interval = (
            timedelta(seconds=schedule.interval_seconds)
            if schedule.interval_seconds is not None
            else None
        )
        self.anchor = schedule.anchor_at
        self.run_at = schedule.run_at
        self.start_at = schedule.start_at
        self.end_at = schedule.end_at

    def _within_end(self, due: datetime | None) -> datetime | None:
        if due is None or (self.end_at is not None and due > self.end_at):
            return None
        return due

    def _cron_after(self, moment: datetime) -> Iterator[datetime]:
        """Cron due times strictly after `moment`, in order. One croniter walks from a
        little before it: a walk keeps track of a repeated hour (the autumn change), a
        fresh start inside that hour does not."""
        walk = croniter(self.cron, (moment - DST_MARGIN).astimezone(self.zone))
        while True:
            due = walk.get_next(datetime)
            if due > moment:
                yield due

    def next_after(self, moment: datetime) -> datetime | None:
        """The first due time strictly after `moment`."""
        if self.cron:
            if self.start_at is not None and self.start_at > moment:
                moment = self.start_at - timedelta(microseconds=1)
            return self._within_end(next(self._cron_after(moment)))
        if self.interval is not None:
            if moment < self.anchor:
                return self._within_end(self.anchor)
            steps = (moment - self.anchor) // self.interval + 1
            return self._within_end(self.anchor + steps * self.interval)
        return self.run_at if self.run_at > moment else None

    def latest_until(self, moment: datetime) -> datetime | None:
        """The last due time at or before `moment`."""
        if self.end_at is not None and moment > self.end_at:
            moment = self.end_at
        if self.cron:
            due = croniter(self.cron, moment.astimezone(self.zone)).get_prev(datetime)
            for following in self._cron_after(min(due, moment - DST_MARGIN)):
                if following > moment:
                    break
                due = following
            if self.start_at is not None and due < self.start_at:
                return None
            return due
        if self.interval is not None:
            if moment < self.anchor:
                return None
            return self.anchor + ((moment - self.anchor) // self.interval) * self.interval
        return self.run_at if self.run_at <= moment else None

    def _after(self, moment: datetime) -> Iterator[datetime]:
        if not self.cron:
            due = self.next_after(moment)
            while due is not None:
                yield due
                due = self.next_after(due)
            return
        first = self.next_after(moment)
        if first is None:
            return
        for due in self._cron_after(first - timedelta(microseconds=1)):
            if self._within_end(due) is None:
                return
            yield due

    def upcoming(self, after: datetime, count: int) -> Iterator[datetime]:
        """At most `count` due times after `after`; fewer near the year 9999, where
        datetime ends."""
        return islice(_until_the_calendar_ends(self._after(after)), count)

    def count_between(self, first: datetime, before: datetime) -> int:
        """How many due times fall in [first, before), counting up to MISSED_COUNT_CAP."""
        if first >= before:
            return 0
        if self.interval is not None and not self.cron:
            last = self.latest_until(before - timedelta(microseconds=1))
            if last is None or last < first:
                return 0
            return min((last - first) // self.interval + 1, MISSED_COUNT_CAP)
        count = 0
        for due in self._after(first - timedelta(microseconds=1)):
            if due >= before or count >= MISSED_COUNT_CAP:
                break
            count += 1
        return count


def _until_the_calendar_ends(times: Iterator[datetime]) -> Iterator[datetime]:
    try:
        yield from times
    except OverflowError:
        return
