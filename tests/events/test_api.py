"""`GET /api/events/` and `GET /api/jobs/{id}/events/`: filters, cursor pages newest first,
team isolation (a node's own events are for staff), 400 on bad filters, and each filter
served by an index."""

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from events.models import Event, EventType
from events.services import event_record
from jobs.scheduling.cycle import place_pending_jobs
from nodes.services import node_cordon
from tests.jobs.making import submit

pytestmark = pytest.mark.django_db


def test_the_list_is_newest_first_and_paged_by_cursor(api, small_node):
    ids = [submit(api) for _ in range(3)]
    first = api.get("/api/events/?page_size=2").json()
    assert [e["job"] for e in first["results"]] == [ids[2], ids[1]]
    second = api.get(first["next"]).json()
    assert [e["job"] for e in second["results"]] == [ids[0]]
    assert first["results"][0] | {"id": 0, "at": ""} == {
        "id": 0,
        "at": "",
        "type": "job.submitted",
        "message": "submitted by alice to queue default",
        "team": "blue",
        "job": ids[2],
        "attempt": None,
        "node": None,
        "schedule": None,
        "actor": "alice",
        "data": {},
    }


def test_each_filter_narrows_the_list(api, staff_api, small_node, broker):
    job_id = submit(api)
    other = submit(api)
    place_pending_jobs(batch_size=10)
    node_cordon(name=small_node.name)

    def types(query, client=api):
        response = client.get(f"/api/events/?{query}")
        assert response.status_code == 200, response.json()
        return [(e["job"], e["type"]) for e in response.json()["results"]]

    assert types(f"job={job_id}") == [(job_id, "job.placed"), (job_id, "job.submitted")]
    assert types("type=job.placed") == [(other, "job.placed"), (job_id, "job.placed")]
    assert types("team=blue&type=job.submitted") == [
        (other, "job.submitted"),
        (job_id, "job.submitted"),
    ]
    # A member sees what the node did to their jobs, not the node's own events.
    assert {t for _, t in types("node=static-1")} == {"job.placed"}
    assert types("node=static-1&type=node.cordoned", staff_api) == [(None, "node.cordoned")]
    future = (timezone.now() + timedelta(hours=1)).isoformat()
    assert types(f"since={future.replace('+', '%2B')}") == []
    assert len(types(f"until={future.replace('+', '%2B')}")) == 4


def test_bad_filters_are_a_400_naming_the_field(api):
    for query, field in (("job=abc", "job"), ("type=nope", "type"), ("since=yesterday", "since")):
        response = api.get(f"/api/events/?{query}")
        assert response.status_code == 400
        assert field in response.json()


def test_another_team_sees_none_of_a_teams_events(api, outsider_api, small_node, broker):
    job_id = submit(api)
    place_pending_jobs(batch_size=10)
    assert outsider_api.get("/api/events/").json()["results"] == []
    assert outsider_api.get(f"/api/events/?job={job_id}").json()["results"] == []
    assert outsider_api.get(f"/api/jobs/{job_id}/events/").status_code == 404


def test_node_events_are_for_staff(api, staff_api, small_node):
    node_cordon(name=small_node.name)
    assert api.get("/api/events/?type=node.cordoned").json()["results"] == []
    [event] = staff_api.get("/api/events/?type=node.cordoned").json()["results"]
    assert (event["node"], event["team"]) == ("static-1", None)


def test_a_jobs_timeline_is_oldest_first(api, small_node, broker):
    job_id = submit(api)
    place_pending_jobs(batch_size=10)
    api.post(f"/api/jobs/{job_id}/cancel/")
    timeline = api.get(f"/api/jobs/{job_id}/events/").json()
    assert [e["type"] for e in timeline] == ["job.submitted", "job.placed", "job.cancelled"]
    assert timeline[1]["node"] == "static-1"


def test_an_event_whose_node_is_gone_still_names_it(staff_api):
    event_record(type=EventType.NODE_OFFLINE, message="gone", node_id=999, data={"node": "old"})
    [event] = staff_api.get("/api/events/").json()["results"]
    assert event["node"] == "old"


def plan(query: str) -> str:
    """The query's plan with scans and sorts priced out, as on a big table: one sorts only
    if no index gives the list's order. Left to choose on this near-empty table, the
    planner may read an index as a bitmap and sort the few rows it expects, depending on
    the column statistics earlier tests' data left (as tests/jobs/test_job_list.py)."""
    compiler = query.query.get_compiler(using="default")
    sql, params = compiler.as_sql()
    with connection.cursor() as cursor:
        for setting in ("enable_seqscan", "enable_sort", "enable_incremental_sort"):
            cursor.execute(f"SET LOCAL {setting} = off")
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        return json.dumps(cursor.fetchone()[0])


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({"job_id": 1}, "event_job_at"),
        ({"node_id": 1}, "event_node_at"),
        ({"schedule_id": 1}, "event_schedule_at"),
        ({"team_id": 1}, "event_team_at"),
        ({"type": "job.placed"}, "event_type_at"),
        ({}, "event_at"),
    ],
)
def test_each_filter_reads_its_index_in_list_order(db, filters, index):
    query = Event.objects.filter(**filters).order_by("-at", "-id")[:50]
    text = plan(query)
    assert index in text
    assert '"Sort"' not in text
