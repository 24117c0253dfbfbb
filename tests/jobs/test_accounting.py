"""The accounting statements: a claim, a batch of successes and a release are one statement
each, whatever the number of rows, and each moves execution, job, allocation and node
counters together."""

import pytest
from django.db import transaction
from django.utils import timezone

from jobs.accounting import Success, allocation_release, claim_execution, successes_finish
from jobs.models import ExecutionStatus, Job, JobExecution, JobStatus, PendingReason
from jobs.scheduling.cycle import place_pending_jobs
from nodes.models import Node
from resources.models import DEFAULT_QUEUE_NAME, AllocationStatus, Queue

pytestmark = pytest.mark.django_db


def make_job(team, **spec) -> Job:
    spec = {"name": "j", "command": ["true"], "cpu_millis": 1000, "memory_mb": 100, **spec}
    return Job.objects.create(team=team, queue=Queue.objects.get(name=DEFAULT_QUEUE_NAME), **spec)


def make_node(name) -> Node:
    return Node.objects.create(name=name, cpu_millis=1000, memory_mb=1024)


def placed_on(tokens) -> dict[str, int]:
    """token -> id of the node its execution was placed on."""
    return dict(JobExecution.objects.filter(token__in=tokens).values_list("token", "node_id"))


def stored(token) -> JobExecution:
    return JobExecution.objects.select_related("job", "allocation", "node").get(token=token)


def counters(node) -> tuple[int, int, int]:
    node.refresh_from_db()
    return node.allocated_cpu_millis, node.allocated_memory_mb, node.allocated_gpu


def test_a_claim_is_one_statement_that_starts_the_execution_its_job_and_its_allocation(
    team, django_assert_num_queries
):
    node = make_node("node-a")
    job = make_job(team, env={"MODE": "fast"}, parameters={"n": 1}, timeout_seconds=60)
    (token,) = place_pending_jobs(batch_size=10).tokens
    now = timezone.now()

    with django_assert_num_queries(1):
        execution = claim_execution(token=token, node_id=node.id, now=now)

    # What the node needs to run the job comes back with the claim.
    assert (execution.token, execution.attempt, execution.node_id) == (token, 1, node.id)
    assert (execution.status, execution.started_at) == (ExecutionStatus.RUNNING, now)
    assert (execution.job.id, execution.job.command, execution.job.env) == (
        job.id,
        ["true"],
        {"MODE": "fast"},
    )
    assert (execution.job.parameters, execution.job.timeout_seconds) == ({"n": 1}, 60)
    row = stored(token)
    assert (row.status, row.started_at) == (ExecutionStatus.RUNNING, now)
    assert (row.job.status, row.job.started_at) == (JobStatus.RUNNING, now)
    assert (row.allocation.status, row.allocation.activated_at) == (AllocationStatus.ACTIVE, now)
    assert counters(node) == (1000, 100, 0)  # held since the placement, not again


def test_a_second_claim_or_one_by_another_node_changes_nothing(team, django_assert_num_queries):
    node, other = make_node("node-a"), make_node("node-b")
    make_job(team)
    (token,) = place_pending_jobs(batch_size=10).tokens
    assert placed_on([token]) == {token: node.id}
    with django_assert_num_queries(1):
        assert claim_execution(token=token, node_id=other.id, now=timezone.now()) is None
    assert stored(token).status == ExecutionStatus.RESERVED

    first = timezone.now()
    assert claim_execution(token=token, node_id=node.id, now=first) is not None
    with django_assert_num_queries(1):
        assert claim_execution(token=token, node_id=node.id, now=timezone.now()) is None
    row = stored(token)
    assert (row.status, row.started_at, row.job.started_at) == ("running", first, first)
    assert row.allocation.activated_at == first
    assert (counters(node), counters(other)) == ((1000, 100, 0), (0, 0, 0))


def test_a_batch_of_successes_on_two_nodes_ends_in_one_statement(team, django_assert_num_queries):
    nodes = [make_node("node-a"), make_node("node-b"), make_node("node-c")]
    for _ in range(3):
        make_job(team)
    tokens = place_pending_jobs(batch_size=10).tokens
    assert sorted(placed_on(tokens).values()) == [node.id for node in nodes]
    running, reserved = tokens[:2], tokens[2]
    for token in running:
        assert claim_execution(token=token, node_id=placed_on([token])[token], now=timezone.now())
    now = timezone.now()

    with django_assert_num_queries(1):
        ended = successes_finish(
            [
                Success(token, log_path=f"/logs/{token}", log_tail=f"out {token}")
                for token in tokens
            ],
            now=now,
        )

    assert ended == {token: stored(token).job_id for token in running}
    for token in running:
        row = stored(token)
        assert (row.status, row.exit_code, row.finished_at) == ("succeeded", 0, now)
        assert (row.log_path, row.log_tail) == (f"/logs/{token}", f"out {token}")
        assert (row.job.status, row.job.pending_reason, row.job.finished_at) == (
            JobStatus.SUCCEEDED,
            PendingReason.NONE,
            now,
        )
        assert (row.allocation.status, row.allocation.released_at) == (
            AllocationStatus.RELEASED,
            now,
        )
        assert counters(row.node) == (0, 0, 0)
    # Not running yet: a success for it is not this statement's to write.
    row = stored(reserved)
    assert (row.status, row.job.status, row.allocation.status) == (
        "reserved",
        "reserved",
        AllocationStatus.RESERVED,
    )
    assert counters(row.node) == (1000, 100, 0)


def test_a_release_is_one_statement_and_a_second_one_changes_nothing(
    team, django_assert_num_queries
):
    node = make_node("node-a")
    make_job(team)
    (token,) = place_pending_jobs(batch_size=10).tokens
    execution = claim_execution(token=token, node_id=node.id, now=timezone.now())
    released_at = timezone.now()

    with transaction.atomic(), django_assert_num_queries(1):
        assert allocation_release(execution_id=execution.id, now=released_at) is True

    row = stored(token)
    assert (row.allocation.status, row.allocation.released_at) == (
        AllocationStatus.RELEASED,
        released_at,
    )
    assert counters(node) == (0, 0, 0)
    # The execution and its job are the caller's to move on.
    assert (row.status, row.job.status) == ("running", "running")

    with transaction.atomic(), django_assert_num_queries(1):
        assert allocation_release(execution_id=execution.id, now=timezone.now()) is False
    row = stored(token)
    assert (row.allocation.status, row.allocation.released_at) == (
        AllocationStatus.RELEASED,
        released_at,
    )
    assert counters(node) == (0, 0, 0)


@pytest.mark.django_db(transaction=True)
def test_a_release_outside_a_transaction_is_refused(team):
    node = make_node("node-a")
    make_job(team)
    (token,) = place_pending_jobs(batch_size=10).tokens
    with pytest.raises(RuntimeError, match="inside the caller's transaction"):
        allocation_release(execution_id=stored(token).id, now=timezone.now())
    assert stored(token).allocation.status == AllocationStatus.RESERVED
    assert counters(node) == (1000, 100, 0)
