"""The jobs list: paged by cursor, newest first, every filter served by an index."""

import pytest
from django.db import connection
from django.test import RequestFactory
from django.utils import timezone

from common.pagination import CursorPagination
from jobs.api.jobs import JobFilter
from jobs.models import Job
from jobs.selectors import job_list_visible

pytestmark = pytest.mark.django_db


def make_jobs(team, queue, count, **fields):
    return [
        Job.objects.create(team=team, queue=queue, name=f"j{i}", command=["true"], **fields)
        for i in range(count)
    ]


def test_following_next_walks_every_job_once_newest_first(api, team, default_queue):
    jobs = make_jobs(team, default_queue, 7)
    # Ties on created_at are broken by id, so a page boundary inside a tie loses nothing.
    same = timezone.now()
    Job.objects.filter(pk__in=[j.pk for j in jobs[2:6]]).update(created_at=same)
    seen, url = [], "/api/jobs/?page_size=3"
    while url:
        body = api.get(url).json()
        assert "count" not in body
        assert len(body["results"]) <= 3
        seen += [job["id"] for job in body["results"]]
        url = body["next"]
    expected = list(Job.objects.order_by("-created_at", "-id").values_list("id", flat=True))
    assert seen == expected and len(set(seen)) == 7


def test_previous_goes_back_to_the_same_page(api, team, default_queue):
    make_jobs(team, default_queue, 5)
    first = api.get("/api/jobs/?page_size=2").json()
    second = api.get(first["next"]).json()
    back = api.get(second["previous"]).json()
    assert [j["id"] for j in back["results"]] == [j["id"] for j in first["results"]]


def test_a_forged_cursor_is_a_404_not_a_500(api, team, default_queue):
    assert api.get("/api/jobs/?cursor=not-a-cursor").status_code == 404


def test_mine_lists_only_the_jobs_the_caller_submitted(api, member, team, default_queue):
    mine = make_jobs(team, default_queue, 2, submitted_by=member)
    make_jobs(team, default_queue, 2)
    listed = api.get("/api/jobs/?mine=true").json()["results"]
    assert sorted(job["id"] for job in listed) == sorted(job.pk for job in mine)
    others = api.get("/api/jobs/?mine=false").json()["results"]
    assert not {job["id"] for job in others} & {job.pk for job in mine}
    assert len(others) == 2


def test_page_size_is_capped_at_500(api, team, default_queue):
    make_jobs(team, default_queue, 3)
    assert len(api.get("/api/jobs/?page_size=100000").json()["results"]) == 3


# The column each filter's index must start from, after the caller's team for a member.
COLUMN = {
    "status": "status",
    "team": "team_id",
    "queue": "queue_id",
    "name": "name",
    "mine": "submitted_by_id",
}


@pytest.mark.parametrize("staff", [False, True], ids=["member", "staff"])
@pytest.mark.parametrize(
    "query",
    [
        {},
        {"status": "succeeded"},
        {"team": "blue"},
        {"queue": "default"},
        {"name": "j1"},
        {"created_after": "2026-01-01T00:00:00Z"},
        {"dead_letter": "true"},
        {"mine": "true"},
        {"status": "failed", "team": "blue"},
    ],
    ids=str,
)
def test_each_filter_reads_its_own_index_in_list_order(team, member, staff, query, default_queue):
    """With sequential scans and sorts priced out, the page is read from an index whose
    condition is the filter (the team, for a member), in list order: a page then costs
    the same with a million jobs, whichever filter picks them."""
    make_jobs(team, default_queue, 3)
    member.is_staff = staff
    request = RequestFactory().get("/api/jobs/", query)
    request.user = member
    jobs = JobFilter(query, queryset=job_list_visible(user=member), request=request).qs
    page = jobs.order_by(*CursorPagination.ordering)[:51]
    with connection.cursor() as cursor:
        for setting in ("enable_seqscan", "enable_sort", "enable_incremental_sort"):
            cursor.execute(f"SET LOCAL {setting} = off")
    plan = page.explain()
    assert "Seq Scan on jobs_job" not in plan and "Sort" not in plan, plan
    lines = plan.splitlines()
    at = next(i for i, line in enumerate(lines) if " on jobs_job " in line)
    index = lines[at].split(" using ")[1].split()[0]
    condition = lines[at + 1] if "Index Cond" in lines[at + 1] else ""
    columns = [COLUMN[key] for key in query if key in COLUMN]
    if "dead_letter" in query:
        assert index == "job_dead_letter" or "team_id" in condition, plan
    elif staff:
        assert all(column in condition for column in columns), plan
    else:  # the planner picks the team's index or the filter's, whichever is narrower
        assert any(column in condition for column in [*columns, "team_id"]), plan
    if staff and "created_after" in query:
        assert index == "job_created" and "created_at" in condition, plan


def test_a_body_over_the_limit_is_a_400_before_it_is_parsed(api, team, small_node, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    spec = {"name": "big", "command": ["echo", "x" * 5000]}
    response = api.post("/api/jobs/", spec, format="json")
    assert response.status_code == 400
    assert "at most 4096" in response.json()["detail"]
    assert not Job.objects.exists()
    assert api.post("/api/jobs/", {**spec, "command": ["true"]}, format="json").status_code == 201


def test_the_list_writes_each_job_as_its_own_page_does(api, member, team, default_queue):
    """The list writes rows, its dead-letter flag worked out by the database; a job's page
    writes the loaded job, its flag from the model's property. Both say the same, with the
    fields the schema declares."""
    from jobs.api.representation import JobSerializer
    from jobs.models import JobExecution
    from jobs.scheduling.cycle import place_pending_jobs
    from nodes.models import Node

    Node.objects.create(name="n1", cpu_millis=4000, memory_mb=4096)
    make_jobs(team, default_queue, 2, env={"A": "1"}, parameters={"n": [1, 2]})
    place_pending_jobs(batch_size=1)
    JobExecution.objects.update(exit_code=3, error="exit code 3", log_tail="out")
    make_jobs(team, default_queue, 1, status="failed", not_before=timezone.now())
    make_jobs(team, default_queue, 1, status="failed", acknowledged_at=timezone.now())
    listed = api.get("/api/jobs/").json()["results"]
    assert len(listed) == 4 and {job["node"] for job in listed} == {"n1", None}
    assert sorted(job["dead_letter"] for job in listed) == [False, False, False, True]
    declared = list(JobSerializer().fields)
    for job in listed:
        assert list(job) == declared
        assert job == JobSerializer(job_list_visible(user=member).get(pk=job["id"])).data
