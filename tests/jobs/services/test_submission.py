"""Accepting a job: two submissions racing for one idempotency key make one job, and the
scheduler is woken once, when the winner's job commits.

The submissions run in threads of their own, each on a connection of its own, so these
tests commit their data (transactional tests)."""

import threading
from contextlib import nullcontext

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from common.wakeup import ARRIVAL, SCHEDULER_CHANNEL
from events.models import Event, EventType
from jobs.models import Job
from jobs.services.submission import job_submit
from tests.processes import raw_connection, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

SPEC = {
    "name": "nightly",
    "command": ["true"],
    "cpu_millis": 1000,
    "memory_mb": 16,
    "gpu": 0,
    "idempotency_key": "nightly-2026-12-03",
}


def arrivals(listener) -> list[str]:
    """The wake-ups delivered to `listener` so far."""
    return [n.payload for n in listener.notifies(timeout=0.5) if n.channel == SCHEDULER_CHANNEL]


def blocked_by(observer, pid: int) -> int:
    """How many backends wait for a lock the backend `pid` holds."""
    return observer.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", [pid]
    ).fetchone()[0]


# The loser submits in a transaction of its caller's (its job in a savepoint) or in none
# (its job, event and wake-up one statement of their own).
@pytest.mark.parametrize("loser_in_transaction", [True, False])
def test_a_submission_that_loses_the_race_for_its_key_returns_the_winners_job(
    team, small_node, loser_in_transaction
):
    inserted, commit = threading.Event(), threading.Event()
    results, winner_pid = {}, []

    def submit(role, hold=False):
        try:
            with transaction.atomic() if hold or loser_in_transaction else nullcontext():
                results[role] = job_submit(team=team, spec=SPEC)
                if hold:  # the winner's row is written, not committed yet
                    with connection.cursor() as cursor:
                        cursor.execute("SELECT pg_backend_pid()")
                        winner_pid.append(cursor.fetchone()[0])
                    inserted.set()
                    commit.wait(30)
        except Exception as exc:
            results[role] = exc
        finally:
            connection.close()

    with raw_connection() as listener:
        listener.execute(f"LISTEN {SCHEDULER_CHANNEL}")
        winner = threading.Thread(target=submit, args=("winner", True))
        winner.start()
        assert inserted.wait(30)
        # The loser finds no job with the key (the winner's is not committed) and waits on
        # the key's unique index for the winner's transaction.
        loser = threading.Thread(target=submit, args=("loser",))
        loser.start()
        wait_until(
            lambda: blocked_by(listener, winner_pid[0]),
            10,
            message="the loser waiting for the winner's key",
        )
        assert arrivals(listener) == []  # nothing committed, so nobody was woken
        commit.set()
        winner.join(30)
        loser.join(30)

        assert results["winner"].created and not results["loser"].created
        assert results["loser"].job.pk == results["winner"].job.pk
        assert Job.objects.filter(idempotency_key=SPEC["idempotency_key"]).count() == 1
        # One wake-up: the winner's, at its commit; the loser's went with its savepoint or
        # its statement.
        assert arrivals(listener) == [ARRIVAL]
        assert Event.objects.filter(type=EventType.JOB_SUBMITTED).count() == 1


def test_a_submission_is_one_statement_that_commits_its_job_event_and_wake_up(team, small_node):
    spec = {name: value for name, value in SPEC.items() if name != "idempotency_key"}
    with raw_connection() as listener:
        listener.execute(f"LISTEN {SCHEDULER_CHANNEL}")
        with CaptureQueriesContext(connection) as queries:
            job = job_submit(team=team, spec=spec).job
        # The queue's lookup, then the one statement, which committed on its own.
        assert len(queries) == 2, [q["sql"][:80] for q in queries]
        assert not connection.in_atomic_block
        assert arrivals(listener) == [ARRIVAL]
    stored = Job.objects.get()
    assert (stored.pk, stored.concurrency_key, stored.created_at) == (
        job.pk,
        job.concurrency_key,
        job.created_at,
    )
    (event,) = Event.objects.filter(job_id=job.pk)
    assert (event.type, event.at, event.team_id, event.actor, event.data) == (
        EventType.JOB_SUBMITTED,
        job.created_at,
        team.pk,
        "",
        {},
    )
    assert event.message == "submitted to queue default"
