"""`GET /metrics`: who may read it, and what it says about a cluster built to known
figures, in a number of statements that does not grow with the cluster."""

import logging
from datetime import timedelta

import pytest
from django.db.models import Count
from django.test import Client
from django.utils import timezone

from accounts.models import Team
from jobs.models import ExecutionStatus, Job, JobExecution
from jobs.scheduling.leader import LEADER_LOCK_ID
from nodes.models import Node
from resources.models import Queue
from tests.jobs.metrics_world import EXPECTED, build_world, scrape
from tests.processes import raw_connection

pytestmark = pytest.mark.django_db

TOKEN = "s3cret-metrics-token"
ALLOWED_LABELS = {"queue", "team", "node", "resource", "outcome", "reason", "status", "le"}


@pytest.fixture
def world(team, default_queue):
    return build_world(team, default_queue)


# --- Who may read it -------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", f"Token {TOKEN}", f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x"],
)
def test_with_a_token_set_a_request_without_it_is_401_even_from_this_host(
    settings, authorization, caplog
):
    settings.METRICS_TOKEN = TOKEN
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    with caplog.at_level(logging.DEBUG):
        response = Client().get("/metrics", REMOTE_ADDR="127.0.0.1", **headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"scheduler_" not in response.content
    assert TOKEN not in caplog.text and TOKEN.encode() not in response.content


def test_with_a_token_set_the_bearer_of_it_reads_the_metrics_from_anywhere(settings):
    settings.METRICS_TOKEN = TOKEN
    values = scrape(HTTP_AUTHORIZATION=f"Bearer {TOKEN}", REMOTE_ADDR="203.0.113.9")
    assert ("scheduler_leader", ()) in values
    scrape(HTTP_AUTHORIZATION=f"bearer  {TOKEN} ", REMOTE_ADDR="203.0.113.9")


@pytest.mark.parametrize(
    ("address", "status"),
    [
        ("127.0.0.1", 200),
        ("::1", 200),
        ("::ffff:127.0.0.1", 200),
        ("10.0.0.5", 403),
        ("203.0.113.9", 403),
        ("::ffff:10.0.0.5", 403),
        ("", 403),
        ("not-an-address", 403),
    ],
)
def test_without_a_token_only_this_host_reads_the_metrics(settings, address, status):
    settings.METRICS_TOKEN = ""
    assert Client().get("/metrics", REMOTE_ADDR=address).status_code == status


@pytest.mark.parametrize("header", ["HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP"])
def test_without_a_token_a_request_through_a_proxy_on_this_host_is_refused(settings, header):
    settings.METRICS_TOKEN = ""
    response = Client().get("/metrics", REMOTE_ADDR="127.0.0.1", **{header: "203.0.113.9"})
    assert response.status_code == 403


def test_a_scraper_that_asks_for_openmetrics_gets_it(default_queue):
    response = Client().get("/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert response["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert response.content.endswith(b"# EOF\n")
    assert b"scheduler_placements_total 0.0" in response.content


def test_only_get_is_answered():
    assert Client().post("/metrics").status_code == 405


# --- What it says ----------------------------------------------------------------------


def test_the_figures_are_those_the_world_was_built_with(world):
    values = scrape()
    wrong = {
        key: (values.get(key), expected)
        for key, expected in EXPECTED.items()
        if values.get(key) != pytest.approx(expected, abs=1e-6)
    }
    assert wrong == {}
    # Due since 100 s (default) and 20 s (gpu), plus the moments the test took.
    age = "scheduler_oldest_pending_job_age_seconds"
    assert 100 <= values[age, (("queue", "default"),)] < 130
    assert 20 <= values[age, (("queue", "gpu"),)] < 50
    # Only where a quota is set; only for nodes not offline whose agent said.
    assert ("scheduler_queue_quota", (("queue", "gpu"), ("resource", "gpu"))) not in values
    assert not [
        key for key in values if key[0] == "scheduler_queue_quota" and "default" in str(key)
    ]
    used = {dict(labels)["node"] for name, labels in values if name == "scheduler_node_used"}
    assert used == {"n-up"}
    # A node shows the resources it has: no GPU series for nodes without GPUs.
    gpu_nodes = {
        dict(labels)["node"]
        for name, labels in values
        if name in ("scheduler_node_capacity", "scheduler_node_allocated")
        and dict(labels)["resource"] == "gpu"
    }
    assert gpu_nodes == {"n-up"}


def test_the_counters_agree_with_the_rows_they_count(world):
    values = scrape()
    by_status = dict(
        JobExecution.objects.filter(status__in=["succeeded", "failed", "cancelled", "lost"])
        .values_list("status")
        .annotate(Count("id"))
    )
    finished = {}
    for (name, labels), value in values.items():
        if name == "scheduler_jobs_finished_total":
            outcome = dict(labels)["outcome"]
            finished[outcome] = finished.get(outcome, 0) + value
    assert {k: v for k, v in finished.items() if v} == by_status
    started_jobs = (
        JobExecution.objects.filter(started_at__isnull=False).values("job").distinct().count()
    )
    waits = sum(v for (n, _), v in values.items() if n == "scheduler_job_wait_seconds_count")
    assert waits == started_jobs == 6
    assert values["scheduler_placements_total", ()] == JobExecution.objects.count()
    dead = values["scheduler_dead_letter_jobs", (("queue", "gpu"),)]
    assert dead == Job.objects.dead_letter().filter(queue__name="gpu").count()


def test_a_counter_of_finished_attempts_does_not_fall_when_a_failed_job_is_requeued(world):
    key = ("scheduler_jobs_finished_total", (("outcome", "failed"), ("queue", "gpu")))
    before = scrape()[key]
    Job.objects.filter(name="job-mark-dead").update(
        status="pending", pending_reason="waiting_retry"
    )
    assert scrape()[key] == before == 1


def test_no_label_names_a_job_and_every_label_is_a_low_cardinality_one(world):
    values = scrape()
    label_names = {name for _, labels in values for name, _ in labels}
    assert label_names <= ALLOWED_LABELS
    label_values = {value for _, labels in values for _, value in labels}
    job_marks = {str(job.pk) for job in world.jobs} | {job.name for job in world.jobs}
    job_marks |= set(JobExecution.objects.values_list("token", flat=True))
    assert label_values & job_marks == set()


def test_the_leader_is_whoever_holds_the_scheduler_lock_in_this_database(world):
    assert scrape()["scheduler_leader", ()] == 0
    with raw_connection() as other:
        other.execute("SELECT pg_advisory_lock(%s)", [LEADER_LOCK_ID])
        assert scrape()["scheduler_leader", ()] == 1
        other.execute("SELECT pg_advisory_unlock(%s)", [LEADER_LOCK_ID])
        # A lock with the same low half but another high half is not the leader's.
        other.execute("SELECT pg_advisory_lock(%s)", [(1 << 32) + LEADER_LOCK_ID])
        assert scrape()["scheduler_leader", ()] == 0


def test_a_scrape_takes_the_same_statements_for_a_larger_cluster(world, django_assert_num_queries):
    client = Client()
    client.get("/metrics")  # a first request may set up the connection
    # Ten statements, and the savepoint that the test's transaction makes of the scrape's.
    with django_assert_num_queries(12):
        scrape(client)
    for i in range(20):
        Queue.objects.create(name=f"more-{i}", quota_cpu_millis=1000)
        Node.objects.create(name=f"more-{i}", cpu_millis=1000, memory_mb=1024)
        Team.objects.create(name=f"More {i}", slug=f"more-{i}")
    with django_assert_num_queries(12):
        values = scrape(client)
    assert values["scheduler_node_up", (("node", "more-19"),)] == 0
    assert values["scheduler_team_past_share", (("team", "more-19"),)] == 0
    assert values["scheduler_jobs", (("queue", "more-19"), ("status", "pending"))] == 0


def test_a_scrape_of_an_empty_cluster_says_zero_rather_than_nothing(default_queue):
    values = scrape()
    assert values["scheduler_jobs", (("queue", "default"), ("status", "pending"))] == 0
    assert values["scheduler_job_wait_seconds_count", (("queue", "default"),)] == 0
    assert values["scheduler_schedule_lateness_seconds_count", ()] == 0
    assert values["scheduler_placements_total", ()] == 0
    assert ExecutionStatus.LOST in {dict(labels).get("outcome") for _, labels in values}


def test_a_pending_job_whose_not_before_has_not_come_waits_for_its_time_not_the_scheduler(
    default_queue, team
):
    now = timezone.now()
    Job.objects.create(
        team=team,
        name="later",
        command=["true"],
        queue=default_queue,
        not_before=now + timedelta(hours=1),
    )
    Job.objects.create(team=team, name="new", command=["true"], queue=default_queue)

    figures = scrape()

    pending = "scheduler_pending_jobs"
    assert figures[pending, (("queue", "default"), ("reason", "waiting_not_before"))] == 1
    assert figures[pending, (("queue", "default"), ("reason", "waiting_scheduler"))] == 1
