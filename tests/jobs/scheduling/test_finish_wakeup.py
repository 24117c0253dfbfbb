"""A finish wakes the scheduler once it has committed, by a NOTIFY of its own: PostgreSQL
commits one notifying transaction at a time, and a finish's transaction holds its node's
row, which every scheduling cycle waits for.

The finishes commit, so these tests do too (transactional tests)."""

import pytest
from django.db import connection

from common.wakeup import NOTIFY_NOW_SQL, NOTIFY_SQL, SCHEDULER_CHANNEL
from jobs.accounting import Success
from jobs.scheduling.freed_room import successes_report
from jobs.services.executions import execution_finish
from nodes.models import Node
from tests.jobs.making import make_jobs, start_running
from tests.processes import raw_connection

pytestmark = pytest.mark.django_db(transaction=True)

WAKE_STATEMENTS = (NOTIFY_SQL, NOTIFY_NOW_SQL)


def report_success(node, token):
    return successes_report(node_id=node.id, successes=[Success(token)], claim=1)


def report_one_success(node, token):
    """`/api/agent/finish/` with exit code 0: the single success, outside a batch."""
    return execution_finish(token=token, exit_code=0)


def report_failure(node, token):
    return execution_finish(token=token, exit_code=1, error="exit code 1")


@pytest.mark.parametrize("finish", [report_success, report_one_success, report_failure])
def test_a_finish_that_leaves_room_wakes_the_scheduler_after_its_commit(team, broker, finish):
    node = Node.objects.create(name="one", cpu_millis=1000, memory_mb=4096)
    make_jobs(team, 1)
    (token,) = start_running(node).values()
    statements = []

    def record(execute, sql, params, many, context):
        statements.append((sql, connection.in_atomic_block))
        return execute(sql, params, many, context)

    with raw_connection() as listener:
        listener.execute(f"LISTEN {SCHEDULER_CHANNEL}")
        with connection.execute_wrapper(record):
            finish(node, token)
        notified = list(listener.notifies(timeout=0.5, stop_after=1))

    node.refresh_from_db()
    assert node.allocated_cpu_millis == 0
    assert [n.channel for n in notified] == [SCHEDULER_CHANNEL]
    notifies = [in_transaction for sql, in_transaction in statements if sql in WAKE_STATEMENTS]
    # One NOTIFY, sent after the finish's transaction committed, not within it.
    assert notifies == [False]
    assert any(in_transaction for _, in_transaction in statements)
    # Its commit alone skipped the flush: the connection's later transactions wait for it.
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone() == ("on",)
