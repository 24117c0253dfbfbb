"""Concurrency limits at placement: the cycle and a finish's freed room never start more
of a team's jobs with one key than its limit, counting what is placed or running."""

import threading

import pytest
from django.db import connection, transaction

from accounts.models import Team
from jobs.accounting import Success
from jobs.models import ConcurrencyLimit, Job, JobStatus, PendingReason
from jobs.scheduling.concurrency import concurrency_slots_lock
from jobs.scheduling.cycle import place_pending_jobs
from jobs.scheduling.freed_room import place_on_freed_room
from jobs.services.executions import executions_finish_succeeded
from nodes.models import Node
from tests.jobs.making import make_jobs, start_running
from tests.processes import raw_connection

pytestmark = pytest.mark.django_db


def statuses(jobs) -> list[tuple[str, str]]:
    return [
        tuple(Job.objects.filter(pk=j.pk).values_list("status", "pending_reason")[0]) for j in jobs
    ]


def test_the_cycle_starts_no_more_than_the_limit_and_says_why_the_rest_wait(team):
    Node.objects.create(name="big", cpu_millis=16000, memory_mb=16384)
    ConcurrencyLimit.objects.create(team=team, key="db", max_running=2)
    keyed = make_jobs(team, 5, concurrency_key="db")
    free = make_jobs(team, 3)

    assert place_pending_jobs(batch_size=100).placed == 5

    assert (
        statuses(keyed)
        == [(JobStatus.RESERVED, "")] * 2
        + [(JobStatus.PENDING, PendingReason.CONCURRENCY_LIMIT)] * 3
    )
    assert {s for s, _ in statuses(free)} == {JobStatus.RESERVED}
    # The slots stay taken across cycles while the jobs hold them.
    assert place_pending_jobs(batch_size=100).placed == 0


def test_limits_are_per_team_and_a_key_without_a_limit_has_none(team):
    Node.objects.create(name="big", cpu_millis=16000, memory_mb=16384)
    other = Team.objects.create(name="Other", slug="other")
    ConcurrencyLimit.objects.create(team=team, key="db", max_running=1)
    mine = make_jobs(team, 2, concurrency_key="db")
    theirs = make_jobs(other, 3, concurrency_key="db")
    unlimited = make_jobs(team, 3, concurrency_key="cache")

    place_pending_jobs(batch_size=100)

    assert [s for s, _ in statuses(mine)] == [JobStatus.RESERVED, JobStatus.PENDING]
    assert {s for s, _ in statuses(theirs + unlimited)} == {JobStatus.RESERVED}


def test_a_limit_of_zero_holds_every_job_of_its_key(team):
    Node.objects.create(name="big", cpu_millis=16000, memory_mb=16384)
    ConcurrencyLimit.objects.create(team=team, key="db", max_running=0)
    jobs = make_jobs(team, 2, concurrency_key="db")
    assert place_pending_jobs(batch_size=100).placed == 0
    assert statuses(jobs) == [(JobStatus.PENDING, PendingReason.CONCURRENCY_LIMIT)] * 2


def test_a_finish_hands_its_slot_to_the_next_job_of_its_key_on_the_freed_room(team, broker):
    node = Node.objects.create(name="one", cpu_millis=8000, memory_mb=8192)
    ConcurrencyLimit.objects.create(team=team, key="db", max_running=1)
    first, second, third = make_jobs(team, 3, concurrency_key="db")
    running = start_running(node)
    assert list(running) == [first.id]

    with transaction.atomic():
        executions_finish_succeeded([Success(running[first.id])], wake=False)
        result = place_on_freed_room(node_id=node.id)

    assert result.placements == [(f"job-{second.id}-attempt-1", "one")]
    assert statuses([second, third]) == [
        (JobStatus.RESERVED, ""),
        (JobStatus.PENDING, PendingReason.CONCURRENCY_LIMIT),
    ]


def test_a_second_placer_waits_for_the_limit_lock_and_then_counts_what_the_first_placed(
    team, transactional_db
):
    """Two placers of the same key: the one that locks the limit second sees the first's
    committed placement, so they cannot both take the last slot."""
    limit = ConcurrencyLimit.objects.create(team=team, key="db", max_running=1)
    job = make_jobs(team, 1, concurrency_key="db")[0]
    seen = {}
    with transaction.atomic():
        assert concurrency_slots_lock([(team.id, "db")]) == {(team.id, "db"): 1}

        def second_placer():
            try:
                with transaction.atomic():
                    seen["slots"] = concurrency_slots_lock([(team.id, "db")])
            finally:
                connection.close()

        thread = threading.Thread(target=second_placer)
        thread.start()
        with raw_connection() as conn:  # the second placer is blocked on the limit row
            for _ in range(200):
                waiting = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%%jobs_concurrencylimit%%'"
                ).fetchone()[0]
                if waiting:
                    break
                threading.Event().wait(0.02)
        assert waiting == 1
        assert "slots" not in seen
        Job.objects.filter(pk=job.pk).update(status=JobStatus.RESERVED)
    thread.join(10)
    assert seen["slots"] == {(team.id, limit.key): 0}
