"""The node agent's success batching: successes reported while a write is in flight share
the next transaction, every reporting thread gets its answer (or the write's error), and
the room they free goes to the reporting threads or is left to the scheduler.

The batcher writes from a thread of its own, on a connection of its own, so these tests
commit their data (transactional tests)."""

import threading
import time

import pytest
from django.db import connection

from common.wakeup import SCHEDULER_CHANNEL
from jobs.agent.runner import running
from jobs.agent.success_batching import Reported, Success, SuccessBatcher
from jobs.models import (
    ConcurrencyLimit,
    ExecutionStatus,
    Job,
    JobExecution,
    JobStatus,
    PendingReason,
)
from jobs.scheduling.cycle import place_pending_jobs
from nodes.models import Node
from resources.models import AllocationStatus
from tests.jobs.agent.conftest import InProcessAdapter
from tests.jobs.making import make_jobs, start_running
from tests.processes import raw_connection, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def control_plane(control_plane):
    """The agent of node "one"."""
    control_plane.session.mount("http://", InProcessAdapter("one"))
    return control_plane


@pytest.fixture
def batcher():
    batcher = SuccessBatcher()
    yield batcher
    batcher.stop()


def waiting_for(holder) -> int:
    """How many backends wait for a lock `holder` holds."""
    # From a connection of its own: in `holder`'s transaction, pg_stat_activity would stay
    # the snapshot taken at its first read.
    with raw_connection() as observer:
        return observer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
            [holder.info.backend_pid],
        ).fetchone()[0]


def report_while_the_jobs_are_held(batcher, node, tokens) -> dict[str, Reported | Exception]:
    """Report each success from a thread of its own, as the agent's task threads do, while
    another connection holds the jobs' rows: the first write waits for them, and the
    reports made meanwhile queue up behind it. Returns each thread's answer or error."""
    answers: dict[str, Reported | Exception] = {}

    def report(token):
        try:
            answers[token] = batcher.report(Success(token))
        except Exception as exc:
            answers[token] = exc

    threads = [threading.Thread(target=report, args=(token,)) for token in tokens]
    with raw_connection() as holder, holder.transaction():
        holder.execute(
            "SELECT 1 FROM jobs_job j JOIN jobs_jobexecution e ON e.job_id = j.id"
            " WHERE e.token = ANY(%s) FOR UPDATE OF j",
            [list(tokens)],
        )
        for thread in threads:
            thread.start()
        wait_until(lambda: waiting_for(holder), 10, message="a write waiting for the jobs")
        time.sleep(0.3)  # the other threads report meanwhile
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a report was never answered"
    return answers


def transactions_that_wrote(tokens) -> int:
    """How many transactions last wrote these executions (PostgreSQL's xmin)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(DISTINCT xmin::text) FROM jobs_jobexecution WHERE token = ANY(%s)",
            [list(tokens)],
        )
        return cursor.fetchone()[0]


def test_successes_reported_together_end_in_fewer_transactions_and_each_is_answered(
    team, broker, batcher
):
    node = Node.objects.create(name="one", cpu_millis=8000, memory_mb=4096)
    make_jobs(team, 8)
    tokens = list(start_running(node).values())
    assert len(tokens) == 8

    answers = report_while_the_jobs_are_held(batcher, node, tokens)

    assert answers == {token: Reported(ended=True, next=None) for token in tokens}
    # The first write, then one for everything reported while it waited.
    assert transactions_that_wrote(tokens) <= 2
    for execution in JobExecution.objects.filter(token__in=tokens).select_related("job"):
        assert (execution.status, execution.job.status) == ("succeeded", "succeeded")
        assert execution.allocation.status == AllocationStatus.RELEASED
    node.refresh_from_db()
    assert (node.allocated_cpu_millis, node.allocated_memory_mb) == (0, 0)


def test_an_error_in_the_write_is_raised_in_every_waiting_thread(team, broker, batcher):
    node = Node.objects.create(name="one", cpu_millis=4000, memory_mb=4096)
    make_jobs(team, 4)
    tokens = list(start_running(node).values())
    # Counters that say nothing is held: releasing the allocations would take them below
    # zero, which the database refuses.
    Node.objects.filter(pk=node.pk).update(allocated_cpu_millis=0)

    answers = report_while_the_jobs_are_held(batcher, node, tokens)

    assert set(answers) == set(tokens)
    for error in answers.values():
        assert isinstance(error, Exception)
        assert "node_allocated_cpu_millis_within_capacity" in str(error)
    statuses = JobExecution.objects.filter(token__in=tokens).values_list("status", flat=True)
    assert set(statuses) == {ExecutionStatus.RUNNING}
    assert set(Job.objects.values_list("status", flat=True)) == {JobStatus.RUNNING}

    # The writer carries on: once the counters are right, a report is written.
    Node.objects.filter(pk=node.pk).update(allocated_cpu_millis=4000)
    assert batcher.report(Success(tokens[0])) == Reported(ended=True, next=None)
    assert JobExecution.objects.get(token=tokens[0]).status == ExecutionStatus.SUCCEEDED
    node.refresh_from_db()
    assert node.allocated_cpu_millis == 3000


@pytest.mark.parametrize(
    ("waiting", "claimed", "woken"),
    [
        (2, 1, False),  # the freed slot is taken: nothing for the scheduler to do
        (0, 0, True),  # nothing waits: the room is the scheduler's
    ],
)
def test_the_freed_slot_is_claimed_for_the_reporting_thread_or_the_scheduler_is_woken(
    team, broker, batcher, waiting, claimed, woken
):
    node = Node.objects.create(name="one", cpu_millis=1000, memory_mb=4096)
    make_jobs(team, 1)
    (token,) = start_running(node).values()
    make_jobs(team, waiting)
    place_pending_jobs(batch_size=100)
    messages = broker.llen("node.one")
    with raw_connection() as listener:
        listener.execute(f"LISTEN {SCHEDULER_CHANNEL}")
        reported = batcher.report(Success(token))
        notified = list(listener.notifies(timeout=0.5, stop_after=1))
    assert reported.ended
    if claimed:
        execution, tracked = reported.next
        running.untrack(tracked)
        # Claimed for the reporting thread, which runs it without a claim of its own.
        assert tracked.token == execution.token
        assert execution.command == ["true"]
        job = Job.objects.get(last_execution__token=execution.token)
        assert (job.status, job.last_execution.status) == ("running", "running")
        assert job.last_execution.allocation.status == AllocationStatus.ACTIVE
    else:
        assert reported.next is None
    assert bool(notified) is woken
    # Claimed for the reporting thread, so no message went to the node's queue.
    assert broker.llen("node.one") == messages


def test_a_batcher_told_not_to_fill_freed_room_leaves_it_to_the_scheduler(team, broker, batcher):
    node = Node.objects.create(name="one", cpu_millis=1000, memory_mb=4096)
    make_jobs(team, 1)
    (token,) = start_running(node).values()
    waiting = make_jobs(team, 1)[0]
    place_pending_jobs(batch_size=100)
    batcher.fill_freed_room = False
    with raw_connection() as listener:
        listener.execute(f"LISTEN {SCHEDULER_CHANNEL}")
        reported = batcher.report(Success(token))
        notified = list(listener.notifies(timeout=0.5, stop_after=1))

    assert reported == Reported(ended=True, next=None)
    assert [n.channel for n in notified] == [SCHEDULER_CHANNEL]
    waiting.refresh_from_db()
    assert (waiting.status, waiting.pending_reason) == (
        JobStatus.PENDING,
        PendingReason.INSUFFICIENT_CAPACITY,
    )
    assert waiting.last_execution_id is None
    assert broker.llen("node.one") == 0
    assert running.tokens() == []
    # The room is free: the scheduler's next cycle places the waiting job there.
    assert place_pending_jobs(batch_size=100).placements == [(f"job-{waiting.id}-attempt-1", "one")]


def test_a_finish_that_frees_a_concurrency_slot_wakes_the_scheduler_though_its_room_is_taken(
    team, broker, batcher
):
    """The freed room goes to a job waiting here; the key's next job waits for the slot on
    another node, which only the scheduler would place."""
    node = Node.objects.create(name="one", cpu_millis=1000, memory_mb=4096, labels={"zone": "a"})
    Node.objects.create(name="two", cpu_millis=1000, memory_mb=4096, labels={"zone": "b"})
    ConcurrencyLimit.objects.create(team=team, key="db", max_running=1)
    make_jobs(team, 1, concurrency_key="db", node_selector={"zone": "a"})
    (token,) = start_running(node).values()
    make_jobs(team, 1, node_selector={"zone": "a"})  # takes the freed room
    keyed = make_jobs(team, 1, concurrency_key="db", node_selector={"zone": "b"})[0]
    place_pending_jobs(batch_size=100)
    keyed.refresh_from_db()
    assert keyed.pending_reason == PendingReason.CONCURRENCY_LIMIT
    with raw_connection() as listener:
        listener.execute(f"LISTEN {SCHEDULER_CHANNEL}")
        reported = batcher.report(Success(token))
        notified = list(listener.notifies(timeout=0.5, stop_after=1))
    _, tracked = reported.next  # the unkeyed job took the room
    running.untrack(tracked)
    assert [n.channel for n in notified] == [SCHEDULER_CHANNEL]
    assert place_pending_jobs(batch_size=100).placements == [(f"job-{keyed.id}-attempt-1", "two")]


def first_write_slowed(batcher, token, *, seconds: float) -> Reported:
    """Report `token`'s success while another connection holds its job's row for `seconds`:
    the write (and so the batcher's linger after it) takes at least that long."""
    answer: dict[str, Reported] = {}
    thread = threading.Thread(target=lambda: answer.update(first=batcher.report(Success(token))))
    with raw_connection() as holder, holder.transaction():
        holder.execute(
            "SELECT 1 FROM jobs_job j JOIN jobs_jobexecution e ON e.job_id = j.id"
            " WHERE e.token = %s FOR UPDATE OF j",
            [token],
        )
        thread.start()
        wait_until(lambda: waiting_for(holder), 10, message="the write waiting for the job")
        time.sleep(seconds)
    thread.join(timeout=30)
    return answer["first"]


def report_in_thread(batcher, token) -> tuple[threading.Thread, dict]:
    answer: dict = {}

    def report():
        answer["reported"] = batcher.report(Success(token))
        answer["at"] = time.monotonic()

    thread = threading.Thread(target=report)
    thread.start()
    return thread, answer


def test_a_success_waits_for_the_execution_the_last_answer_handed_out_to_share_its_request(
    team, broker, batcher
):
    node = Node.objects.create(name="one", cpu_millis=2000, memory_mb=4096)
    make_jobs(team, 2)
    first, second = start_running(node).values()
    make_jobs(team, 1)
    place_pending_jobs(batch_size=100)  # told it waits for room
    handed, tracked = first_write_slowed(batcher, first, seconds=0.6).next

    # The second success comes while the execution handed out runs: it waits for it.
    thread, answer = report_in_thread(batcher, second)
    time.sleep(0.2)
    assert batcher.report(Success(handed.token)) == Reported(ended=True, next=None)
    thread.join(timeout=30)
    running.untrack(tracked)

    assert answer["reported"] == Reported(ended=True, next=None)
    assert transactions_that_wrote([second, handed.token]) == 1


def test_a_success_waits_no_longer_than_the_last_request_took(team, broker, batcher):
    node = Node.objects.create(name="one", cpu_millis=2000, memory_mb=4096)
    make_jobs(team, 2)
    first, second = start_running(node).values()
    make_jobs(team, 1)
    place_pending_jobs(batch_size=100)
    handed, tracked = first_write_slowed(batcher, first, seconds=0.6).next
    answered = time.monotonic()

    # The execution handed out does not end: the second success goes once the linger,
    # as long as the first request took, is over.
    thread, answer = report_in_thread(batcher, second)
    thread.join(timeout=30)
    running.untrack(tracked)

    assert answer["reported"] == Reported(ended=True, next=None)
    assert 0.5 < answer["at"] - answered < 3
    assert JobExecution.objects.get(token=handed.token).status == ExecutionStatus.RUNNING
