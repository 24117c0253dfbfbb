"""The usage report (`GET /api/usage/report/`): what attempts used, known by construction,
split between the days each ran, the same before a fold, after it and after retention
has purged the jobs; only the caller's teams; bad queries are 400s."""

import importlib
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from accounts.models import Team, User
from jobs.models import ExecutionStatus, Job, JobExecution, JobStatus, UsageTally
from jobs.services.metrics_tallies import metrics_tallies_fold
from jobs.services.retention import jobs_purge
from nodes.models import Node
from resources.models import Allocation, AllocationStatus, Queue

pytestmark = pytest.mark.django_db

# A UTC midnight, long enough ago that retention may purge what ended on the day before.
MIDNIGHT = datetime(2026, 6, 10, tzinfo=UTC)
DAY_BEFORE, DAY = "2026-06-09", "2026-06-10"
SPAN = {"since": "2026-06-01", "until": "2026-07-01"}


def attempt(job, node, *, status, started, finished, held, attempt=1):
    """An attempt of `job` that ran from `started` to `finished` (None: it runs on, or never
    started) with an allocation of `held` (cpu millis, memory MB, gpu), or none."""
    execution = JobExecution.objects.create(
        job=job,
        attempt=attempt,
        node=node,
        token=f"usage-{job.pk}-{attempt}",
        status=status,
        reserved_at=started or MIDNIGHT,
        started_at=started,
        finished_at=finished,
    )
    if held is not None:
        cpu, memory, gpu = held
        live = finished is None and started is not None
        Allocation.objects.create(
            execution=execution,
            node=node,
            queue_id=job.queue_id,
            team_id=job.team_id,
            cpu_millis=cpu,
            memory_mb=memory,
            gpu=gpu,
            status=AllocationStatus.ACTIVE if live else AllocationStatus.RELEASED,
            released_at=None if live else finished or MIDNIGHT,
        )
    return execution


@pytest.fixture
def world(team, other_team, default_queue, member, outsider):
    """Blue's jobs by alice and bob in two queues, and one of red's by mallory:

    - alice's `across` ran 23:00 to 01:00 over the midnight with 2 CPU, 1 GiB, 1 GPU, and
      succeeded: an hour on each day, an attempt on the second;
    - bob's `flaky` (in queue `batch`) failed after half an hour with 0.5 CPU and 512 MiB,
      then succeeded in a quarter with 1 CPU;
    - alice's `never` was cancelled before it started: nothing;
    - mallory's `red` ran an hour with 4 CPU on the day.
    """
    node = Node.objects.create(name="n1", cpu_millis=8000, memory_mb=8192, gpu=1)
    batch = Queue.objects.create(name="batch", all_teams=True)
    bob = User.objects.create_user("bob")
    hour = timedelta(hours=1)

    def job(name, team, user, queue=default_queue, status=JobStatus.SUCCEEDED):
        return Job.objects.create(
            team=team, queue=queue, submitted_by=user, name=name, command=["true"], status=status
        )

    across = job("across", team, member)
    attempt(
        across,
        node,
        status=ExecutionStatus.SUCCEEDED,
        started=MIDNIGHT - hour,
        finished=MIDNIGHT + hour,
        held=(2000, 1024, 1),
    )
    flaky = job("flaky", team, bob, queue=batch)
    attempt(
        flaky,
        node,
        status=ExecutionStatus.FAILED,
        started=MIDNIGHT + 10 * hour,
        finished=MIDNIGHT + 10.5 * hour,
        held=(500, 512, 0),
    )
    attempt(
        flaky,
        node,
        attempt=2,
        status=ExecutionStatus.SUCCEEDED,
        started=MIDNIGHT + 11 * hour,
        finished=MIDNIGHT + 11.25 * hour,
        held=(1000, 512, 0),
    )
    never = job("never", team, member, status=JobStatus.CANCELLED)
    attempt(never, node, status=ExecutionStatus.CANCELLED, started=None, finished=None, held=None)
    Job.objects.filter(pk=never.pk).update(finished_at=MIDNIGHT)
    red = job("red", other_team, outsider)
    attempt(
        red,
        node,
        status=ExecutionStatus.SUCCEEDED,
        started=MIDNIGHT + 5 * hour,
        finished=MIDNIGHT + 6 * hour,
        held=(4000, 2048, 0),
    )
    Job.objects.filter(status=JobStatus.SUCCEEDED).update(finished_at=MIDNIGHT + 12 * hour)
    return node


def figures(attempts, succeeded, run, cpu, memory_gb, gpu):
    return {
        "attempts": attempts,
        "succeeded": succeeded,
        "run_hours": run,
        "cpu_hours": cpu,
        "memory_gb_hours": memory_gb,
        "gpu_hours": gpu,
    }


# What blue used, by construction.
BLUE = figures(3, 2, 2.75, 4.5, 2.375, 2.0)
BY_DAY = [
    {"day": DAY_BEFORE, **figures(0, 0, 1.0, 2.0, 1.0, 1.0)},
    {"day": DAY, **figures(3, 2, 1.75, 2.5, 1.375, 1.0)},
]
BY_QUEUE_AND_USER = [
    {"queue": "batch", "user": "bob", **figures(2, 1, 0.75, 0.5, 0.375, 0.0)},
    {"queue": "default", "user": "alice", **figures(1, 1, 2.0, 4.0, 2.0, 2.0)},
]


def report(api, **query):
    response = api.get("/api/usage/report/", {**SPAN, **query})
    assert response.status_code == 200, response.json()
    return response.json()


def assert_blue_report(api):
    by_team = report(api)
    assert by_team["by"] == ["team"]
    assert by_team["rows"] == [{"team": "blue", **BLUE}]
    assert by_team["total"] == BLUE
    assert report(api, by="day")["rows"] == BY_DAY
    assert report(api, by="queue,user")["rows"] == BY_QUEUE_AND_USER
    only_bob = report(api, by="team", user="bob")
    assert only_bob["total"] == figures(2, 1, 0.75, 0.5, 0.375, 0.0)
    assert report(api, queue="default", since=DAY)["total"] == figures(1, 1, 1.0, 2.0, 1.0, 1.0)


def test_attempts_are_split_between_the_days_they_ran_on_and_outlive_their_jobs(world, api):
    assert_blue_report(api)

    assert metrics_tallies_fold()["executions"] == 5
    assert UsageTally.objects.count() == 4  # alice's two days, bob's day, mallory's day
    assert_blue_report(api)

    purged = jobs_purge(before=MIDNIGHT + timedelta(days=1))
    assert purged.jobs == 4 and not Job.objects.exists()
    assert_blue_report(api)

    # A deleted user's history keeps their name.
    User.objects.filter(username="bob").delete()
    assert report(api, user="bob")["total"] == figures(2, 1, 0.75, 0.5, 0.375, 0.0)


def test_a_running_attempt_counts_until_now_and_as_an_attempt_once_it_ends(world, api):
    job = Job.objects.create(
        team=Team.objects.get(slug="blue"),
        queue=Queue.objects.get(name="default"),
        name="long",
        command=["true"],
        status=JobStatus.RUNNING,
    )
    started = datetime.now(UTC) - timedelta(hours=2)
    execution = attempt(
        job,
        world,
        status=ExecutionStatus.RUNNING,
        started=started,
        finished=None,
        held=(3000, 0, 0),
    )
    today = {"since": SPAN["since"], "until": str((datetime.now(UTC) + timedelta(days=1)).date())}

    running = report(api, **today)["total"]
    assert running["attempts"] == BLUE["attempts"]
    assert running["cpu_hours"] == pytest.approx(BLUE["cpu_hours"] + 6.0, abs=0.01)
    assert running["run_hours"] == pytest.approx(BLUE["run_hours"] + 2.0, abs=0.01)

    JobExecution.objects.filter(pk=execution.pk).update(
        status=ExecutionStatus.FAILED, finished_at=started + timedelta(hours=1)
    )
    metrics_tallies_fold()
    ended = report(api, **today)["total"]
    assert ended == {
        **BLUE,
        "attempts": 4,
        "run_hours": BLUE["run_hours"] + 1.0,
        "cpu_hours": BLUE["cpu_hours"] + 3.0,
    }


def test_each_caller_sees_only_their_teams(world, api, outsider_api, staff_api):
    assert [row["team"] for row in report(outsider_api)["rows"]] == ["red"]
    assert report(outsider_api)["total"] == figures(1, 1, 1.0, 4.0, 2.0, 0.0)
    assert [row["team"] for row in report(staff_api)["rows"]] == ["blue", "red"]
    assert report(staff_api)["total"]["cpu_hours"] == BLUE["cpu_hours"] + 4.0

    response = api.get("/api/usage/report/", {**SPAN, "team": "red"})
    assert response.status_code == 400
    assert response.json() == {"team": ["No team you can see has this slug."]}
    assert report(staff_api, team="red")["rows"] == [
        {"team": "red", **figures(1, 1, 1.0, 4.0, 2.0, 0.0)}
    ]
    # A span with nothing in it has no rows.
    assert report(api, since="2026-07-01", until="2026-07-02")["rows"] == []


def test_the_default_span_is_the_last_thirty_days(world, api):
    body = api.get("/api/usage/report/").json()
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    assert body["until"] == str(tomorrow)
    assert body["since"] == str(tomorrow - timedelta(days=30))
    assert body["rows"] == [] and body["total"]["attempts"] == 0


@pytest.mark.parametrize(
    "query, errors",
    [
        ({"by": "team,colour"}, {"by": ["Unknown: colour. Choose from team, queue, user, day."]}),
        ({"by": ","}, {"by": ["Choose from team, queue, user, day."]}),
        ({"by": "team,team"}, {"by": ["Name each at most once."]}),
        ({"since": "2026-13-01"}, {"since": ["Date has wrong format. Use one of these formats "
                                             "instead: YYYY-MM-DD."]}),
        ({"since": "2026-06-02", "until": "2026-06-02"}, {"until": ["Must be after `since`."]}),
        ({"since": "2000-01-01", "until": "2026-01-01"},
         {"since": ["At most 3660 days at once; this asks 9497."]}),
        ({"until": "9999-12-31"}, {"until": ["Must be from 2000-01-01 to 9999-01-01."]}),
        ({"queue": "nope"}, {"queue": ['No queue "nope".']}),
        ({"team": "Not a slug!"}, {"team": ['Enter a valid "slug" consisting of letters, '
                                           "numbers, underscores or hyphens."]}),
    ],
)  # fmt: skip
def test_a_bad_query_is_a_400_naming_its_field(world, api, query, errors):
    response = api.get("/api/usage/report/", query)
    assert response.status_code == 400
    assert response.json() == errors


def test_the_migration_counts_what_was_folded_before_it_as_the_fold_does(world):
    metrics_tallies_fold()
    columns = ("day", "team", "queue", "username", "attempts", "succeeded", "run_seconds",
               "cpu_seconds", "memory_mb_seconds", "gpu_seconds")  # fmt: skip
    folded = set(UsageTally.objects.values_list(*columns))
    assert len(folded) == 4
    UsageTally.objects.all().delete()
    migration = importlib.import_module("jobs.migrations.0025_usage_tally")
    with connection.cursor() as cursor:
        cursor.execute(migration.BACKFILL_SQL)
    assert set(UsageTally.objects.values_list(*columns)) == folded


def test_the_usage_page_shows_the_report_and_its_csv(world, member, client):
    client.force_login(member)
    page = client.get("/usage/", {**SPAN, "by": ["queue", "user"]})
    assert page.status_code == 200
    html = page.content.decode()
    table = html[html.index('<table id="usage">') :]
    assert "<th>Queue</th><th>User</th>" in table
    # bob's row, then alice's, then the total; red's usage is not on blue's page.
    cells = [
        re.sub(r"<[^>]+>", " ", row).split()
        for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]
    ]
    assert cells == [
        ["batch", "bob", "2", "1", "0.75", "0.5", "0.375", "0"],
        ["default", "alice", "1", "1", "2", "4", "2", "2"],
        ["Total", "3", "2", "2.75", "4.5", "2.375", "2"],
    ]
    assert 'value="queue" checked' in html and 'value="team" >' in html
    assert 'name="since" value="2026-06-01"' in html
    assert "From 2026-06-01 to 2026-07-01, the last day excluded." in html
    # Without a span, the form shows the default one.
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    assert f'name="until" value="{tomorrow}"' in client.get("/usage/").content.decode()

    download = client.get("/usage/", {**SPAN, "by": "day", "format": "csv"})
    assert download["Content-Type"] == "text/csv; charset=utf-8"
    assert download["Content-Disposition"] == (
        'attachment; filename="usage-2026-06-01-2026-07-01.csv"'
    )
    assert download.content.decode().splitlines() == [
        "day,attempts,succeeded,run_hours,cpu_hours,memory_gb_hours,gpu_hours",
        f"{DAY_BEFORE},0,0,1.0,2.0,1.0,1.0",
        f"{DAY},3,2,1.75,2.5,1.375,1.0",
    ]

    refused = client.get("/usage/", {"since": "2026-06-02", "until": "2026-06-01"})
    assert refused.status_code == 200
    assert "until: Must be after `since`." in refused.content.decode()
    assert '<table id="usage">' not in refused.content.decode()
