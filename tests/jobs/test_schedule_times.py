"""Due times of cron, interval and one-off schedules, without waiting for any."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from jobs.models import JobSchedule
from jobs.schedule_times import ScheduleTimeError, Timetable, cron_check, describe, timezone_check

BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def cron(expression, zone="UTC", **fields) -> Timetable:
    return Timetable(JobSchedule(cron=expression, timezone=zone, **fields))


def test_berlin_cron_skips_the_missing_hour_in_spring():
    # 2026-03-29 02:00 CET jumps to 03:00 CEST: 02:30 does not exist that night.
    times = list(cron("30 2 * * *", "Europe/Berlin").upcoming(utc(2026, 3, 27, 12), 4))
    assert [t.astimezone(BERLIN).isoformat() for t in times] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    assert [t.astimezone(UTC).hour for t in times] == [1, 1, 0, 0]


def test_berlin_hourly_cron_runs_twice_in_the_repeated_autumn_hour():
    # 2026-10-25 03:00 CEST falls back to 02:00 CET: local 02:00 happens twice.
    times = list(cron("0 * * * *", "Europe/Berlin").upcoming(utc(2026, 10, 24, 22, 30), 5))
    assert [t.astimezone(UTC) for t in times] == [
        utc(2026, 10, 24, 23),
        utc(2026, 10, 25, 0),
        utc(2026, 10, 25, 1),
        utc(2026, 10, 25, 2),
        utc(2026, 10, 25, 3),
    ]
    assert [t.astimezone(BERLIN).strftime("%H:%M%z") for t in times] == [
        "01:00+0200",
        "02:00+0200",
        "02:00+0100",
        "03:00+0100",
        "04:00+0100",
    ]


def test_berlin_daily_cron_keeps_local_time_across_the_autumn_change():
    times = list(cron("0 9 * * *", "Europe/Berlin").upcoming(utc(2026, 10, 24, 12), 2))
    assert [t.astimezone(UTC) for t in times] == [utc(2026, 10, 25, 8), utc(2026, 10, 26, 8)]


def test_cron_latest_due_includes_the_due_time_itself():
    table = cron("*/5 * * * *")
    assert table.latest_until(utc(2026, 1, 1, 10, 5)) == utc(2026, 1, 1, 10, 5)
    assert table.latest_until(utc(2026, 1, 1, 10, 9, 59, 999999)) == utc(2026, 1, 1, 10, 5)
    assert table.next_after(utc(2026, 1, 1, 10, 5)) == utc(2026, 1, 1, 10, 10)
    assert table.count_between(utc(2026, 1, 1, 10, 5), utc(2026, 1, 1, 10, 20)) == 3


def test_cron_respects_start_and_end():
    table = cron("0 * * * *", start_at=utc(2026, 1, 1, 10), end_at=utc(2026, 1, 1, 12))
    assert table.next_after(utc(2026, 1, 1, 0)) == utc(2026, 1, 1, 10)
    assert table.latest_until(utc(2026, 1, 1, 9, 30)) is None
    assert table.latest_until(utc(2026, 1, 2)) == utc(2026, 1, 1, 12)
    assert table.next_after(utc(2026, 1, 1, 12)) is None


def test_interval_due_times_stay_on_their_anchor():
    table = Timetable(JobSchedule(interval_seconds=10, anchor_at=utc(2026, 1, 1, 0, 0, 5)))
    assert table.latest_until(utc(2026, 1, 1, 0, 0, 4)) is None
    assert table.latest_until(utc(2026, 1, 1, 0, 0, 5)) == utc(2026, 1, 1, 0, 0, 5)
    assert table.latest_until(utc(2026, 1, 1, 0, 1, 4, 900000)) == utc(2026, 1, 1, 0, 0, 55)
    assert table.next_after(utc(2026, 1, 1, 0, 0, 55)) == utc(2026, 1, 1, 0, 1, 5)
    assert table.count_between(utc(2026, 1, 1, 0, 0, 15), utc(2026, 1, 1, 0, 0, 45)) == 3


def test_a_one_off_is_due_once():
    table = Timetable(JobSchedule(run_at=utc(2026, 5, 1, 12)))
    assert table.next_after(utc(2026, 5, 1)) == utc(2026, 5, 1, 12)
    assert table.next_after(utc(2026, 5, 1, 12)) is None
    assert table.latest_until(utc(2026, 5, 1, 11)) is None
    assert table.latest_until(utc(2026, 5, 2)) == utc(2026, 5, 1, 12)


@pytest.mark.parametrize(
    "expression",
    ["* * * *", "*/5 * * * * *", "61 * * * *", "* 25 * * *", "hello", "* * * * MON-XYZ"],
)
def test_it_rejects_cron_expressions_beat_cannot_run(expression):
    with pytest.raises(ScheduleTimeError):
        cron_check(expression)


def test_it_normalizes_spacing_and_accepts_names():
    assert cron_check(" 0  9 * *   MON-FRI ") == "0 9 * * MON-FRI"


def test_it_knows_iana_zones_only():
    assert timezone_check("Europe/Berlin") == BERLIN
    for name in ("Mars/Olympus", "CEST", "", "../etc/passwd"):
        with pytest.raises(ScheduleTimeError):
            timezone_check(name)


def test_it_describes_schedules_in_words():
    assert describe(JobSchedule(cron="*/5 * * * 1-5", timezone="Europe/Berlin")) == (
        "Every 5 minutes, Monday through Friday (Europe/Berlin)"
    )
    assert describe(JobSchedule(interval_seconds=60)) == "Every 60 seconds"
    run_at = utc(2026, 5, 1) + timedelta(hours=1)
    assert describe(JobSchedule(run_at=run_at)) == "Once, at 2026-05-01T01:00:00+00:00"
