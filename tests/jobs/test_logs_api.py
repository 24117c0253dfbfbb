"""Logs through the API, from the database only: an attempt's whole log, and the search
over every visible attempt's lines (`GET /api/logs/?q=`), answered from the trigram
index and never showing another team's lines."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs.log_reading import LogSearch, log_chunks_matching
from jobs.models import JobDefinition, JobExecution, JobLogChunk
from nodes.models import Node
from resources.models import Queue
from tests.jobs.making import make_jobs, start_running

pytestmark = pytest.mark.django_db


@pytest.fixture
def node(db):
    return Node.objects.create(name="node-a", cpu_millis=64000, memory_mb=65536)


def running_execution(team, node, **spec) -> JobExecution:
    make_jobs(team, 1, **spec)
    (token,) = start_running(node).values()
    return JobExecution.objects.get(token=token)


def ship(execution, *texts, first_line=1, offset=0):
    """Chunks as an agent ships them."""
    for seq, text in enumerate(texts):
        JobLogChunk.objects.create(
            execution=execution, seq=seq, first_line=first_line, offset=offset, text=text
        )
        first_line += text.count("\n")
        offset += len(text.encode())


def body(response) -> str:
    return b"".join(response.streaming_content).decode()


def test_an_attempts_log_is_read_whole_from_the_database(api, team, node):
    execution = running_execution(team, node)
    ship(execution, "one\ntwo\n", "three\n")
    JobExecution.objects.filter(pk=execution.pk).update(log_path="/nowhere/on/this/host.log")
    for query in ({}, {"attempt": 1}, {"attempt": 1, "follow": "false"}):
        response = api.get(f"/api/jobs/{execution.job_id}/logs/", query)
        assert response.status_code == 200
        assert response["Content-Type"] == "text/plain; charset=utf-8"
        assert body(response) == "one\ntwo\nthree\n"


def test_a_log_cut_by_its_cap_starts_with_what_was_dropped(api, team, node):
    execution = running_execution(team, node)
    ship(execution, "41\n42\n", first_line=41, offset=500)
    text = body(api.get(f"/api/jobs/{execution.job_id}/logs/"))
    assert text == (
        "[log cut: 40 lines (500 bytes) dropped to keep the attempt under its cap]\n41\n42\n"
    )


def test_an_ended_attempt_with_nothing_shipped_shows_its_tail(api, team, node):
    execution = running_execution(team, node)
    JobExecution.objects.filter(pk=execution.pk).update(status="failed", log_tail="kept tail\n")
    assert body(api.get(f"/api/jobs/{execution.job_id}/logs/")) == "kept tail\n"


def test_following_an_ended_attempt_answers_its_log_and_closes(api, team, node):
    execution = running_execution(team, node)
    ship(execution, "done\n")
    JobExecution.objects.filter(pk=execution.pk).update(status="succeeded")
    response = api.get(f"/api/jobs/{execution.job_id}/logs/", {"follow": "true"})
    assert response["Cache-Control"] == "no-cache"
    assert body(response) == "done\n"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"attempt": "x"}, "attempt"),
        ({"attempt": "0"}, "attempt"),
        ({"attempt": str(2**31)}, "attempt"),
        ({"follow": "maybe"}, "follow"),
    ],
)
def test_bad_log_parameters_are_a_400_naming_the_field(api, team, node, query, field):
    execution = running_execution(team, node)
    response = api.get(f"/api/jobs/{execution.job_id}/logs/", query)
    assert response.status_code == 400
    assert field in response.json()


def test_another_teams_attempt_log_is_a_404(outsider_api, team, node):
    execution = running_execution(team, node)
    ship(execution, "secret\n")
    response = outsider_api.get(f"/api/jobs/{execution.job_id}/logs/", {"follow": "true"})
    assert response.status_code == 404


# --- search ---------------------------------------------------------------------------


@pytest.fixture
def logs(team, other_team, node, outsider):
    """Blue's two jobs (one from a definition, on its own queue) and red's one."""
    queue = Queue.objects.create(name="blue-q")
    queue.teams.add(team)
    definition = JobDefinition.objects.create(
        team=team, queue=queue, name="nightly", command=["true"]
    )
    plain = running_execution(team, node)
    ship(plain, "starting\n", "Widget ERROR: disk full\nretrying\n", "widget error again\n")
    defined = running_execution(team, node, definition=definition, queue=queue)
    ship(defined, "no widget trouble here\n")
    red = running_execution(other_team, node)
    ship(red, "red widget error\n")
    return {"plain": plain, "defined": defined, "red": red, "definition": definition}


def results(response):
    assert response.status_code == 200, response.json()
    return [(r["job"], r["attempt"], r["line"], r["text"]) for r in response.json()["results"]]


def test_search_finds_matching_lines_with_job_attempt_and_line_ignoring_case(api, logs):
    job = logs["plain"].job_id
    assert results(api.get("/api/logs/", {"q": "widget error"})) == [
        (job, 1, 4, "widget error again"),
        (job, 1, 2, "Widget ERROR: disk full"),
    ]


def test_search_filters_by_team_queue_definition_job_and_time(api, logs, team):
    plain, defined = logs["plain"].job_id, logs["defined"].job_id
    jobs = lambda **q: {r[0] for r in results(api.get("/api/logs/", {"q": "widget", **q}))}  # noqa: E731
    assert jobs() == {plain, defined}
    assert jobs(team="blue") == {plain, defined}
    assert jobs(team="red") == set()
    assert jobs(queue="blue-q") == {defined}
    assert jobs(definition=logs["definition"].pk) == {defined}
    assert jobs(job=plain) == {plain}
    JobLogChunk.objects.filter(execution=logs["plain"]).update(
        created_at=timezone.now() - timedelta(days=2)
    )
    yesterday = (timezone.now() - timedelta(days=1)).isoformat()
    assert jobs(since=yesterday) == {defined}
    assert jobs(until=yesterday) == {plain}


def test_search_never_shows_another_teams_lines(outsider_api, api, staff_api, logs):
    red = logs["red"].job_id
    assert [r[0] for r in results(outsider_api.get("/api/logs/", {"q": "widget"}))] == [red]
    assert red not in {r[0] for r in results(api.get("/api/logs/", {"q": "red widget"}))}
    assert results(outsider_api.get("/api/logs/", {"q": "disk full"})) == []
    assert results(outsider_api.get("/api/logs/", {"q": "disk", "team": "blue"})) == []
    assert len(results(staff_api.get("/api/logs/", {"q": "widget error"}))) == 3


def test_search_pages_follow_next_to_the_end(api, team, node):
    execution = running_execution(team, node)
    ship(execution, *[f"match {i}\n" for i in range(5)])
    seen, url = [], "/api/logs/?q=match&page_size=2"
    while url:
        page = api.get(url).json()
        seen += [r["line"] for r in page["results"]]
        url = page["next"]
    assert seen == [5, 4, 3, 2, 1]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({}, "q"),
        ({"q": "ab"}, "q"),
        ({"q": "x" * 201}, "q"),
        ({"q": "abc", "job": "one"}, "job"),
        ({"q": "abc", "since": "yesterday"}, "since"),
        ({"q": "abc", "page_size": "501"}, "page_size"),
        ({"q": "abc", "team": "not a slug"}, "team"),
        ({"q": "   "}, "q"),
        ({"q": "abc", "job": str(2**63)}, "job"),
        ({"q": "abc", "before": str(2**63)}, "before"),
    ],
)
def test_bad_search_parameters_are_a_400_naming_the_field(api, query, field):
    response = api.get("/api/logs/", query)
    assert response.status_code == 400
    assert field in response.json()


@pytest.fixture
def ten_thousand_logs(team, node):
    """10,000 attempts' logs, loaded with SQL, and one marked attempt among them."""
    marked = running_execution(team, node, name="marked")
    ship(marked, "before\nthe MARKER-7f3a9c is here\nafter\n")
    make_jobs(team, 10_000, name="bulk", status="succeeded")
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO jobs_jobexecution (job_id, attempt, node_id, token, status,
                                           reserved_at, error, log_path, log_tail)
            SELECT j.id, 1, %s, 'job-' || j.id || '-attempt-1', 'succeeded', now(), '', '', ''
              FROM jobs_job j WHERE j.name = 'bulk'
            """,
            [node.pk],
        )
        cursor.execute(
            """
            INSERT INTO jobs_joblogchunk (execution_id, seq, first_line, "offset", text)
            SELECT e.id, s, 1 + s * 3, s * 120,
                   'processing marker batch ' || e.id || ' step ' || s || E' of the run\n'
                   || 'rows read ' || (e.id * 7 + s) || E', rows written 0\n'
                   || 'status ok in ' || (s * 13 % 97) || E' ms\n'
              FROM jobs_jobexecution e, generate_series(0, 1) s
             WHERE e.status = 'succeeded'
            """
        )
        cursor.execute("ANALYZE jobs_job, jobs_jobexecution, jobs_joblogchunk")
    assert JobExecution.objects.count() == 10_001
    return marked


def test_a_unique_marker_is_found_among_ten_thousand_attempts_logs(api, ten_thousand_logs):
    assert results(api.get("/api/logs/", {"q": "marker-7F3A9C"})) == [
        (ten_thousand_logs.job_id, 1, 2, "the MARKER-7f3a9c is here")
    ]


def test_a_search_reads_the_trigram_index_not_every_chunk(ten_thousand_logs, member):
    """For a member and for staff, with sequential scans priced out, as for the jobs list:
    at 20,000 chunks reading them all may still be the cheaper plan, which it is not at a
    million."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
    for staff in (False, True):
        member.is_staff = staff
        chunks = log_chunks_matching(user=member, search=LogSearch(text="marker-7F3A9C"))
        plan = chunks[:100].explain()
        assert "log_chunk_text_trgm" in plan, (staff, plan)
        assert "Seq Scan on jobs_joblogchunk" not in plan, (staff, plan)


def test_a_search_costs_the_same_statements_however_many_attempts_match(api, team, node):
    def statements() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert api.get("/api/logs/", {"q": "needle"}).status_code == 200
        return len(queries)

    ship(running_execution(team, node), "a needle\n")
    statements()  # the token's use is recorded at most once a minute
    one = statements()
    for _ in range(5):
        ship(running_execution(team, node), "more needles\n", "and a needle\n")
    assert statements() == one
