"""The scheduler process's leadership, run in this process against the real database."""

import socket
import threading
import time
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.utils import timezone

from common.db import tables_analyze_when_changed
from common.wakeup import ARRIVAL, SCHEDULER_CHANNEL
from jobs.models import Job, JobExecution
from jobs.scheduling.cycle import place_pending_jobs
from jobs.scheduling.leader import Scheduler
from jobs.services.failover import execution_republish_stale
from nodes.models import Node, NodeStatus
from resources.models import DEFAULT_QUEUE_NAME, Queue
from tests.processes import raw_connection

pytestmark = pytest.mark.django_db(transaction=True)


def test_only_one_scheduler_leads_at_a_time_and_the_next_takes_over(db):
    first = Scheduler(tick_seconds=1, batch_size=10)
    second = Scheduler(tick_seconds=1, batch_size=10)
    try:
        assert first.try_to_lead()
        assert not second.try_to_lead()
        first.lose_leadership()
        assert second.try_to_lead()
    finally:
        first.lose_leadership()
        second.lose_leadership()


def test_a_new_leader_republishes_what_its_predecessor_committed_but_never_sent(team, broker):
    Node.objects.create(name="n1", cpu_millis=4000, memory_mb=4096)
    queue = Queue.objects.get(name=DEFAULT_QUEUE_NAME)
    Job.objects.create(team=team, queue=queue, name="j", command=["true"])
    # A leader that committed its cycle and died before publishing.
    assert place_pending_jobs(batch_size=10).placed == 1
    assert broker.llen("node.n1") == 0
    scheduler = Scheduler(tick_seconds=1, batch_size=10)
    try:
        assert scheduler.try_to_lead()
    finally:
        scheduler.lose_leadership()
    assert broker.llen("node.n1") == 1


@pytest.mark.parametrize(
    ("cluster_full", "payload", "waits"),
    [
        (True, ARRIVAL, True),  # only told why it waits: gathered with the next arrivals
        (True, "", False),  # may mean room: at once
        (False, ARRIVAL, False),  # there is room: placed at once
    ],
)
def test_a_full_cluster_gathers_arrivals_but_answers_anything_else_at_once(
    db, settings, cluster_full, payload, waits
):
    settings.SCHEDULER_FULL_COALESCE_SECONDS = 0.5
    scheduler = Scheduler(tick_seconds=5, batch_size=10)
    try:
        assert scheduler.try_to_lead()
        scheduler.cluster_full = cluster_full
        with raw_connection() as other:
            other.execute("SELECT pg_notify(%s, %s)", [SCHEDULER_CHANNEL, payload])
        started = time.monotonic()
        scheduler.wait_for_wakeup(5)
        waited = time.monotonic() - started
    finally:
        scheduler.lose_leadership()
    if waits:
        assert 0.4 < waited < 1.5
    else:
        assert waited < 0.3


def test_a_scheduler_times_each_cycle_and_says_whether_it_leads(db):
    scheduler = Scheduler(tick_seconds=1, batch_size=10)
    other = Scheduler(tick_seconds=1, batch_size=10)

    def sample(name, s=scheduler):
        return s.metrics.registry.get_sample_value(name)

    try:
        assert sample("scheduler_leader") == 0.0
        assert sample("scheduler_cycle_duration_seconds_count") == 0.0
        assert scheduler.try_to_lead() and not other.try_to_lead()
        assert sample("scheduler_leader") == 1.0
        assert sample("scheduler_leader", other) == 0.0
        scheduler.step()
        scheduler.step()
        assert sample("scheduler_cycle_duration_seconds_count") == 2.0
        assert 0 < sample("scheduler_cycle_duration_seconds_sum") < 5
    finally:
        scheduler.lose_leadership()
        other.lose_leadership()
    assert sample("scheduler_leader") == 0.0


def test_a_metrics_port_already_taken_stops_the_scheduler_before_it_starts(db):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CommandError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            call_command("run_scheduler", metrics_port=port)


def test_the_leader_analyzes_a_busy_table_once_it_has_changed_enough(db, settings):
    """A table that grew since its last ANALYZE by autovacuum's measure (50 rows and
    10 %) is analyzed by the leader, so its statistics (here pg_class.reltuples) follow;
    a smaller change, or a look before SCHEDULER_ANALYZE_SECONDS, analyzes nothing."""
    settings.SCHEDULER_ANALYZE_SECONDS = 60

    def stats_flushed():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_force_next_flush()")

    def reltuples() -> float:
        with connection.cursor() as cursor:
            cursor.execute("SELECT reltuples FROM pg_class WHERE relname = 'nodes_node'")
            return cursor.fetchone()[0]

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE nodes_node")
    Node.objects.bulk_create(
        Node(name=f"n{i}", cpu_millis=1000, memory_mb=1024) for i in range(200)
    )
    stats_flushed()
    scheduler = Scheduler(tick_seconds=1, batch_size=10, analyzed_tables=("nodes_node",))
    scheduler.keep_statistics()
    assert reltuples() == 200

    Node.objects.bulk_create(
        Node(name=f"m{i}", cpu_millis=1000, memory_mb=1024) for i in range(100)
    )
    stats_flushed()
    scheduler.keep_statistics()  # looked less than a minute ago
    assert reltuples() == 200
    scheduler.next_analyze = 0
    scheduler.keep_statistics()
    assert reltuples() == 300

    Node.objects.bulk_create(Node(name=f"k{i}", cpu_millis=1000, memory_mb=1024) for i in range(60))
    stats_flushed()
    scheduler.next_analyze = 0
    scheduler.keep_statistics()  # 60 rows, under 50 + 10 % of 300
    assert reltuples() == 300


def test_a_table_someone_else_is_vacuuming_is_skipped_not_waited_for(db):
    """While another session holds the lock VACUUM and ANALYZE take, the leader's look
    returns at once and leaves that table for its next look."""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE nodes_node")
    Node.objects.bulk_create(
        Node(name=f"n{i}", cpu_millis=1000, memory_mb=1024) for i in range(200)
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
    with raw_connection() as vacuum, vacuum.transaction():
        vacuum.execute("LOCK TABLE nodes_node IN SHARE UPDATE EXCLUSIVE MODE")
        started = time.monotonic()
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '3s'")  # a wait fails, not hangs
            tables_analyze_when_changed(["nodes_node"])
        assert time.monotonic() - started < 2
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE relname = 'nodes_node'")
        assert cursor.fetchone()[0] == 0


def test_the_leader_handles_lost_nodes_and_reconciles_at_their_intervals(team, broker, settings):
    settings.NODE_LOST_CHECK_SECONDS = 60
    settings.RECONCILE_INTERVAL_SECONDS = 60
    settings.METRICS_FOLD_SECONDS = 60
    settings.EXECUTION_DISPATCH_TIMEOUT_SECONDS = 0
    Node.objects.create(name="n1", cpu_millis=4000, memory_mb=4096, last_heartbeat=timezone.now())
    Job.objects.create(
        team=team, queue=Queue.objects.get(name=DEFAULT_QUEUE_NAME), name="j", command=["true"]
    )
    assert place_pending_jobs(batch_size=10).placed == 1  # committed, never sent
    silent = Node.objects.create(
        name="silent",
        cpu_millis=1000,
        memory_mb=1024,
        last_heartbeat=timezone.now() - timedelta(hours=1),
    )
    scheduler = Scheduler(tick_seconds=5, batch_size=10)
    scheduler.maintain()
    assert Node.objects.get(pk=silent.pk).status == NodeStatus.OFFLINE
    assert broker.llen("node.n1") == 1  # reconciliation sent it
    # Not again before its interval: the wait is bounded by the next one.
    scheduler.maintain()
    assert broker.llen("node.n1") == 1
    assert 50 < scheduler.seconds_to_maintenance() <= 60


def test_reconciliation_run_twice_at_once_sends_each_message_once(team, broker, settings):
    Node.objects.create(name="n1", cpu_millis=4000, memory_mb=4096)
    Job.objects.create(
        team=team, queue=Queue.objects.get(name=DEFAULT_QUEUE_NAME), name="j", command=["true"]
    )
    assert place_pending_jobs(batch_size=10).placed == 1
    time.sleep(0.01)
    # Beat's run holds the row it is re-publishing when the leader's comes.
    with transaction.atomic():
        JobExecution.objects.select_for_update().get()
        assert execution_republish_stale_elsewhere() == 0
    assert execution_republish_stale(older_than_seconds=0) == 1
    assert execution_republish_stale(older_than_seconds=0.5) == 0
    assert broker.llen("node.n1") == 1


def execution_republish_stale_elsewhere() -> int:
    """execution_republish_stale on a connection of its own, as another process runs it."""
    result = []
    thread = threading.Thread(
        target=lambda: (
            result.append(execution_republish_stale(older_than_seconds=0)),
            connection.close(),
        )
    )
    thread.start()
    thread.join(10)
    return result[0]
