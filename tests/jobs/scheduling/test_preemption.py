"""Preemption against the real database: the choice recorded once, the victims' nodes
asked to stop them, the room held for the preemptor, and the victims back to pending
without using a retry."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from events.models import Event, EventType
from jobs.models import ExecutionStatus, Job, JobExecution, JobStatus, PendingReason
from jobs.scheduling.cycle import place_pending_jobs
from jobs.scheduling.preemption import job_preemption_preview, preempt_for_waiting_jobs
from jobs.selectors import execution_stop_requests
from jobs.services.executions import execution_claim, execution_finish
from nodes.models import Node
from resources.models import Queue
from tests.jobs.making import make_jobs, start_running

pytestmark = pytest.mark.django_db


def state(job) -> tuple[str, str]:
    job.refresh_from_db()
    return job.status, job.pending_reason


@pytest.fixture
def full_node(team, broker):
    """A 2-CPU node running two 1-CPU jobs: a preemptible one of priority 0 and a
    non-preemptible one of priority 0."""
    node = Node.objects.create(name="one", cpu_millis=2000, memory_mb=4096)
    low = make_jobs(team, 1, preemptible=True, max_retries=0)[0]
    pinned = make_jobs(team, 1, preemptible=False)[0]
    tokens = start_running(node)
    return node, low, pinned, tokens


def test_a_high_priority_job_preempts_the_preemptible_one_and_gets_its_room(team, full_node):
    node, low, pinned, tokens = full_node
    high = make_jobs(team, 1, priority=10)[0]
    place_pending_jobs(batch_size=100)
    assert state(high) == (JobStatus.PENDING, PendingReason.INSUFFICIENT_CAPACITY)
    preview = job_preemption_preview(job=high)
    assert preview["state"] == "would_preempt"
    assert [v["token"] for v in preview["victims"]] == [tokens[low.id]]
    assert JobExecution.objects.filter(preempt_requested_at__isnull=False).count() == 0

    result = preempt_for_waiting_jobs()

    low.refresh_from_db()
    assert list(result.victims) == [low.last_execution_id]
    assert state(high) == (JobStatus.PENDING, PendingReason.PREEMPTING)
    assert high.reservation_node_id == node.id
    victim = JobExecution.objects.get(token=tokens[low.id])
    assert victim.preempted_by_id == high.id and victim.preempt_requested_at is not None
    assert JobExecution.objects.get(token=tokens[pinned.id]).preempt_requested_at is None
    asked = execution_stop_requests(tokens=list(tokens.values()), node_id=node.id)
    told = {"token": tokens[low.id], "grace_seconds": 30, "preempted_by": high.id}
    assert asked.preempt == [told]
    assert (asked.cancel, asked.taken_away) == ([], [])
    # Recorded once: another round finds nothing more to do.
    assert preempt_for_waiting_jobs().victims == {}
    assert job_preemption_preview(job=high)["state"] == "under_way"

    # A small job arriving meanwhile does not take the room held for the preemptor.
    small = make_jobs(team, 1, priority=20, cpu_millis=500)[0]
    execution_finish(token=tokens[low.id], exit_code=-15, error="killed", preempted=True)
    assert state(low) == (JobStatus.PENDING, "")
    assert low.preemptions == 1 and low.attempts == 1
    assert not low.retries.exists()
    victim.refresh_from_db()
    assert victim.status == ExecutionStatus.PREEMPTED
    event = Event.objects.get(type=EventType.JOB_PREEMPTED)
    assert event.job_id == low.id and f"job {high.id}" in event.message

    place_pending_jobs(batch_size=100)
    assert state(high) == (JobStatus.RESERVED, "")
    assert high.last_execution.node_id == node.id
    assert state(small) == (JobStatus.PENDING, PendingReason.INSUFFICIENT_CAPACITY)
    assert state(low)[0] == JobStatus.PENDING
    node.refresh_from_db()
    assert node.allocated_cpu_millis == 2000


def test_a_preempted_attempt_does_not_use_a_retry(team, full_node):
    node, low, _, tokens = full_node
    Job.objects.filter(pk=low.pk).update(max_retries=1)
    high = make_jobs(team, 1, priority=10)[0]
    place_pending_jobs(batch_size=100)
    preempt_for_waiting_jobs()
    execution_finish(token=tokens[low.id], exit_code=0, error="", preempted=True)
    low.refresh_from_db()
    assert (low.status, low.attempts, low.preemptions, low.max_retries) == ("pending", 1, 1, 1)
    place_pending_jobs(batch_size=100)  # the preemptor takes the room
    assert state(high)[0] == JobStatus.RESERVED
    # Its second attempt failing is its first failure: its one retry is still there.
    high_token = Job.objects.get(pk=high.pk).last_execution.token
    execution_claim(token=high_token, node_id=node.id)
    execution_finish(token=high_token, exit_code=0)
    place_pending_jobs(batch_size=100)
    token = Job.objects.get(pk=low.pk).last_execution.token
    assert token.endswith("attempt-2")
    execution_claim(token=token, node_id=node.id)
    execution_finish(token=token, exit_code=3, error="exit code 3")
    assert state(low) == (JobStatus.PENDING, PendingReason.WAITING_RETRY)
    assert low.retries.count() == 1


def test_equal_priority_and_non_preemptible_work_is_never_preempted(team, broker):
    node = Node.objects.create(name="one", cpu_millis=2000, memory_mb=4096)
    make_jobs(team, 1, preemptible=True, priority=5)
    make_jobs(team, 1, preemptible=False, priority=0)
    start_running(node)
    equal = make_jobs(team, 1, priority=5)[0]
    place_pending_jobs(batch_size=100)
    assert preempt_for_waiting_jobs().victims == {}
    assert job_preemption_preview(job=equal) is None
    assert not JobExecution.objects.filter(preempt_requested_at__isnull=False).exists()


def test_nothing_to_preempt_costs_one_query(team, broker):
    Node.objects.create(name="one", cpu_millis=2000, memory_mb=4096)
    make_jobs(team, 3, cpu_millis=128000)  # waits, but nothing runs to preempt
    with CaptureQueriesContext(connection) as queries:
        assert preempt_for_waiting_jobs().victims == {}
    # savepoint, the look, release
    assert len(queries) <= 3


def test_the_queue_grace_is_what_the_agent_is_told(team, full_node):
    node, low, _, tokens = full_node
    Queue.objects.filter(pk=low.queue_id).update(preemption_grace_seconds=3)
    make_jobs(team, 1, priority=10)
    place_pending_jobs(batch_size=100)
    preempt_for_waiting_jobs()
    asked = execution_stop_requests(tokens=[tokens[low.id]], node_id=node.id)
    assert asked.preempt[0]["grace_seconds"] == 3


def test_a_victim_that_ends_on_its_own_first_is_a_success_and_the_room_still_goes_to_the_preemptor(
    team, full_node
):
    _, low, _, tokens = full_node
    high = make_jobs(team, 1, priority=10)[0]
    place_pending_jobs(batch_size=100)
    preempt_for_waiting_jobs()
    assert execution_finish(token=tokens[low.id], exit_code=0) == ExecutionStatus.SUCCEEDED
    assert state(low) == (JobStatus.SUCCEEDED, "")
    place_pending_jobs(batch_size=100)
    assert state(high)[0] == JobStatus.RESERVED


def test_submission_takes_the_queue_default_unless_the_job_says(api, team, broker):
    Node.objects.create(name="one", cpu_millis=2000, memory_mb=4096)
    Queue.objects.create(name="scavenger", all_teams=True, preemptible_default=True)
    base = {"name": "x", "command": ["true"], "queue": "scavenger"}
    default = api.post("/api/jobs/", base, format="json").json()
    assert default["preemptible"] is True and default["preemptions"] == 0
    pinned = api.post("/api/jobs/", {**base, "preemptible": False}, format="json").json()
    assert pinned["preemptible"] is False
    plain = api.post("/api/jobs/", {**base, "queue": "default"}, format="json").json()
    assert plain["preemptible"] is False
    bad = api.post("/api/jobs/", {**base, "preemptible": "sometimes"}, format="json")
    assert bad.status_code == 400 and "preemptible" in bad.json()
    assert Job.objects.count() == 3


def test_why_shows_what_would_be_preempted_and_changes_nothing(api, team, full_node):
    _, low, _, tokens = full_node
    high = make_jobs(team, 1, priority=10)[0]
    place_pending_jobs(batch_size=100)
    answer = api.get(f"/api/jobs/{high.id}/why/").json()
    assert answer["preemption"]["state"] == "would_preempt"
    assert answer["preemption"]["victims"] == [
        {"job": low.id, "token": tokens[low.id], "priority": 0, "node": "one"}
    ]
    assert "It would preempt on node one" in answer["summary"]
    assert state(high) == (JobStatus.PENDING, PendingReason.INSUFFICIENT_CAPACITY)
    assert not JobExecution.objects.filter(preempt_requested_at__isnull=False).exists()

    preempt_for_waiting_jobs()
    answer = api.get(f"/api/jobs/{high.id}/why/").json()
    assert answer["reason"] == "preempting"
    assert answer["preemption"]["state"] == "under_way"
    assert answer["preemption"]["grace_ends_at"] is not None
    assert [v["token"] for v in answer["preemption"]["victims"]] == [tokens[low.id]]
    # A job that may preempt nothing (its priority is no higher) has null.
    same = make_jobs(team, 1)[0]
    place_pending_jobs(batch_size=100)
    answer = api.get(f"/api/jobs/{same.id}/why/").json()
    assert answer["reason"] == "insufficient_capacity" and answer["preemption"] is None


def test_a_preemptor_whose_queue_reached_its_quota_meanwhile_does_not_take_the_held_room(
    team, full_node
):
    _, low, _, tokens = full_node
    capped = Queue.objects.create(name="capped", all_teams=True, quota_cpu_millis=1000)
    high = make_jobs(team, 1, priority=10, queue=capped)[0]
    place_pending_jobs(batch_size=100)
    preempt_for_waiting_jobs()
    assert state(high) == (JobStatus.PENDING, PendingReason.PREEMPTING)
    # Meanwhile another of the queue's jobs starts on a new node: the queue is at its quota.
    other = Node.objects.create(name="two", cpu_millis=1000, memory_mb=4096)
    urgent = make_jobs(team, 1, priority=20, queue=capped)[0]
    place_pending_jobs(batch_size=100)
    assert state(urgent) == (JobStatus.RESERVED, "")
    assert urgent.last_execution.node_id == other.id

    execution_finish(token=tokens[low.id], exit_code=-15, error="killed", preempted=True)
    place_pending_jobs(batch_size=100)

    # The victims have gone, but the queue may start nothing more.
    assert state(high) == (JobStatus.PENDING, PendingReason.QUEUE_QUOTA)
    live = Job.objects.filter(queue=capped).exclude(status=JobStatus.PENDING)
    assert list(live.values_list("pk", flat=True)) == [urgent.pk]
