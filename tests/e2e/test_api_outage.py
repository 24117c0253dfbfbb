"""Node agents reach the control plane through the web API only, so they must outlive
it: while the web server is down their jobs run on, their outcomes wait in the agent,
and they are reported once it is back; a restart of every web worker under load loses
and repeats nothing."""

import itertools
import signal
import time

import pytest
from django.db.models import Count

from jobs.models import Job, JobExecution, JobStatus
from nodes.models import Node, NodeLoss, NodeStatus
from tests.processes import wait_until

pytestmark = pytest.mark.e2e


def submit_marked(api, count, marker, seconds, cpu=0.1) -> list[int]:
    """`count` jobs that each append their id to `marker`, then sleep `seconds`."""
    ids = []
    for _ in range(count):
        response = api.post(
            "/api/jobs/",
            {
                "name": "marked",
                "command": ["sh", "-c", f'echo "$JOB_ID" >> {marker}; sleep {seconds}'],
                "resources": {"cpu": cpu, "memory_mb": 16},
            },
            format="json",
        )
        assert response.status_code == 201, response.json()
        ids.append(response.json()["id"])
    return ids


def assert_each_ran_exactly_once(ids, marker) -> None:
    assert Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).count() == len(ids)
    runs = sorted(int(line) for line in marker.read_text().split())
    assert runs == sorted(ids)
    attempts = JobExecution.objects.filter(job_id__in=ids).values("job_id").annotate(n=Count("id"))
    assert {row["n"] for row in attempts} == {1}


def test_an_agent_whose_server_is_down_for_20_s_runs_its_jobs_and_reports_them_after(
    cluster, api, tmp_path
):
    # An outage of the web server longer than NODE_LOST_AFTER_SECONDS fails the node
    # over, by design, as a lost one: here it is shorter, as with the default of 30 s.
    cluster.env["NODE_LOST_AFTER_SECONDS"] = "60"
    cluster.start_maintenance()
    marker = tmp_path / "runs.txt"
    node = cluster.start_node("node-a", cpu=2, slots=8)
    cluster.start_scheduler()
    ids = submit_marked(api, 6, marker, 3)
    wait_until(
        lambda: Job.objects.filter(pk__in=ids, status=JobStatus.RUNNING).count() == 6,
        30,
        message="six running jobs",
    )
    cluster.stop_api()
    down_at = time.monotonic()
    # The jobs end while the server is away; their outcomes wait in the agent.
    time.sleep(20)
    assert node.alive
    assert Job.objects.filter(pk__in=ids, status=JobStatus.RUNNING).count() == 6
    assert len(marker.read_text().split()) == 6
    cluster.start_api()
    wait_until(
        lambda: Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).count() == 6,
        30,
        message="the outcomes to be reported",
    )
    assert time.monotonic() - down_at >= 20
    assert_each_ran_exactly_once(ids, marker)
    assert "control plane unreachable" in node.log()


def test_200_jobs_succeed_exactly_once_across_a_restart_of_every_web_worker(cluster, api, tmp_path):
    # The scheduler leader detects lost nodes; a restart that outlasted the suite's 5 s
    # (gunicorn's start on a loaded machine) would fail the node over, as a lost one.
    cluster.env["NODE_LOST_AFTER_SECONDS"] = "60"
    marker = tmp_path / "runs.txt"
    cluster.api_workers = 2
    node = cluster.start_node("node-a", cpu=2, slots=16)
    cluster.start_scheduler()
    ids = submit_marked(api, 200, marker, 0.2)
    wait_until(
        lambda: Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).count() >= 30,
        60,
        message="the first jobs to succeed",
    )
    cluster.stop_api()
    time.sleep(2)
    cluster.start_api()
    wait_until(
        lambda: Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).count() == 200,
        180,
        interval=0.5,
        message="200 jobs to succeed",
    )
    assert_each_ran_exactly_once(ids, marker)
    assert "control plane unreachable" in node.log()  # the agent did meet the restart


def assert_one_per_window(*, seconds: float) -> None:
    """Nodes were lost, but not all four, and one at a time at least `seconds` apart."""
    losses = list(NodeLoss.objects.order_by("lost_at").values_list("node_name", "lost_at"))
    assert 1 <= len(losses) <= 3, losses
    gaps = [(b[1] - a[1]).total_seconds() for a, b in itertools.pairwise(losses)]
    assert all(gap >= seconds for gap in gaps), losses


def test_a_web_outage_longer_than_node_loss_fails_over_one_node_per_window(cluster, api, tmp_path):
    """Four nodes all fall silent when the web server goes away: the loss is held, so
    only the longest silent node goes offline per NODE_LOST_AFTER_SECONDS instead of
    all four; the others' jobs run on and are reported once it is back, and those
    failed over run again."""
    cluster.env["NODE_LOST_AFTER_SECONDS"] = "4"
    marker = tmp_path / "runs.txt"
    for name in ("node-a", "node-b", "node-c", "node-d"):
        cluster.start_node(name, cpu=1)
    cluster.start_scheduler()  # the leader checks for lost nodes every second
    ids = submit_marked(api, 4, marker, 12, cpu=1)  # one per node
    wait_until(
        lambda: Job.objects.filter(pk__in=ids, status=JobStatus.RUNNING).count() == 4,
        30,
        message="a job running on each node",
    )
    cluster.stop_api()
    # Every node silent for two windows of 4 s and more (not held, all four would have
    # gone offline at once after the first).
    time.sleep(10)
    assert_one_per_window(seconds=4)
    cluster.start_api()
    # The kept nodes' jobs end and are reported; the failed-over ones start again.
    kept = Job.objects.filter(pk__in=ids, attempts=1)
    again = Job.objects.filter(
        pk__in=ids, attempts=2, status__in=(JobStatus.RUNNING, JobStatus.SUCCEEDED)
    )
    wait_until(
        lambda: kept.filter(status=JobStatus.SUCCEEDED).count() + again.count() == 4,
        60,
        message="the kept jobs to succeed and the others to run again",
    )
    # Until its heartbeat got through again (the agents back off up to 5 s), a node may
    # still have gone: once the others are heard from, the hold ends.
    lost = NodeLoss.objects.count()
    assert again.count() == lost
    # Each ran once, but for those failed over, which run a second time.
    expected = sorted(ids + list(again.values_list("id", flat=True)))
    wait_until(
        lambda: sorted(int(line) for line in marker.read_text().split()) == expected,
        10,
        message=f"runs {expected}",
    )
    wait_until(lambda: Node.objects.filter(status=NodeStatus.READY).count() == 4, 30)


def test_a_web_server_that_answers_heartbeats_late_loses_no_node(cluster, api, tmp_path):
    """The web server is stopped (SIGSTOP) for 3, then 5, then 8 s, running 0.7 s in
    between, as a backlog holds requests: every node's heartbeats then arrive as far
    apart, the node-loss time (5 s here) stretches with them, and no node is failed
    over, though the last silence is longer than it. Without the stretch the loss of
    the three silent nodes is held, one per window, and one goes."""
    marker = tmp_path / "runs.txt"
    for name in ("node-a", "node-b", "node-c"):
        cluster.start_node(name, cpu=1)
    scheduler = cluster.start_scheduler()  # the leader checks for lost nodes each second
    ids = submit_marked(api, 3, marker, 20, cpu=1)  # one per node
    wait_until(
        lambda: Job.objects.filter(pk__in=ids, status=JobStatus.RUNNING).count() == 3,
        30,
        message="a job running on each node",
    )
    for stopped_for in (3, 5, 8):
        cluster.api.signal_group(signal.SIGSTOP)
        try:
            time.sleep(stopped_for)
        finally:
            cluster.api.signal_group(signal.SIGCONT)
        time.sleep(0.7)
    assert not NodeLoss.objects.exists()
    assert "node loss stretched" in scheduler.log()
    wait_until(
        lambda: Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).count() == 3,
        60,
        message="the three jobs to succeed",
    )
    assert_each_ran_exactly_once(ids, marker)
    assert set(Node.objects.values_list("status", flat=True)) == {NodeStatus.READY}
