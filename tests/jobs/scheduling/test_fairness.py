"""Fair share over many cycles: queues with long backlogs on a saturated cluster.

Cycles run in this process against the real database. Between cycles, some executions
end through the same services a node agent calls (claim, then finish), chosen at random,
so the cluster keeps freeing room and the scheduler keeps choosing who gets it.
"""

import random

import pytest
from django.db.models import Sum

from jobs.models import ExecutionStatus, Job, JobExecution
from jobs.scheduling.cycle import MIN_JOBS_PER_QUEUE, place_pending_jobs
from jobs.services.executions import execution_claim, execution_finish
from nodes.models import Node
from resources.models import LIVE_ALLOCATION_STATUSES, Allocation, Queue

pytestmark = pytest.mark.django_db


def backlog(team, queue, count):
    Job.objects.bulk_create(
        [
            Job(team=team, queue=queue, name=f"{queue.name}-{i}", command=["true"], cpu_millis=1000)
            for i in range(count)
        ]
    )


def held_cpu(queue, team=None) -> int:
    allocations = Allocation.objects.filter(
        status__in=LIVE_ALLOCATION_STATUSES, execution__job__queue=queue
    )
    if team is not None:
        allocations = allocations.filter(execution__job__team=team)
    return allocations.aggregate(cpu=Sum("cpu_millis"))["cpu"] or 0


def finish_some(rng: random.Random, fraction: float) -> int:
    """End a random share of the placed executions, as their node agents would."""
    placed = list(JobExecution.objects.filter(status=ExecutionStatus.RESERVED))
    ended = rng.sample(placed, k=max(1, int(len(placed) * fraction)))
    for execution in ended:
        assert execution_claim(token=execution.token, node_id=execution.node_id)
        execution_finish(token=execution.token, exit_code=0)
    return len(ended)


def run_rounds(queues, rounds: int, seed: int, teams=()) -> dict[str, list[int]]:
    """Each queue's CPU held after each cycle, and with `teams`, each team's in the
    first queue."""
    rng = random.Random(seed)
    samples: dict[str, list[int]] = {name: [] for name in [q.name for q in queues]}
    samples |= {t.slug: [] for t in teams}
    for _ in range(rounds):
        place_pending_jobs(batch_size=1000)
        for queue in queues:
            samples[queue.name].append(held_cpu(queue))
        for t in teams:
            samples[t.slug].append(held_cpu(queues[0], t))
        finish_some(rng, fraction=0.3)
    return samples


def test_weights_of_three_to_one_share_a_saturated_cluster_three_to_one(team):
    for i in range(5):
        Node.objects.create(name=f"n{i}", cpu_millis=4000, memory_mb=8192)  # 20 CPU in all
    heavy = Queue.objects.create(name="heavy", all_teams=True, weight=3)
    light = Queue.objects.create(name="light", all_teams=True, weight=1)
    backlog(team, heavy, 400)
    backlog(team, light, 400)

    samples = run_rounds([heavy, light], rounds=40, seed=3)

    # The cluster stayed full and both queues kept a backlog the whole time.
    assert all(h + lo == 20_000 for h, lo in zip(samples["heavy"], samples["light"], strict=True))
    assert Job.objects.filter(queue=light, status="pending").exists()
    ratio = sum(samples["heavy"]) / sum(samples["light"])
    assert 3 * 0.9 <= ratio <= 3 * 1.1, ratio


def test_a_queue_at_its_quota_stays_there_and_the_others_share_the_rest_by_weight(team):
    for i in range(4):
        Node.objects.create(name=f"n{i}", cpu_millis=6000, memory_mb=8192)  # 24 CPU in all
    capped = Queue.objects.create(name="capped", all_teams=True, weight=10, quota_cpu_millis=4000)
    heavy = Queue.objects.create(name="heavy", all_teams=True, weight=2)
    light = Queue.objects.create(name="light", all_teams=True, weight=1)
    for queue in (capped, heavy, light):
        backlog(team, queue, 300)

    samples = run_rounds([capped, heavy, light], rounds=30, seed=11)

    # However large its weight, the capped queue never holds more than its quota...
    assert max(samples["capped"]) == 4000
    # ...and the other two share the remaining 20 CPU two to one.
    ratio = sum(samples["heavy"]) / sum(samples["light"])
    assert 2 * 0.9 <= ratio <= 2 * 1.1, ratio
    assert Job.objects.filter(queue=capped, pending_reason="queue_quota").exists()


@pytest.mark.parametrize("red_weight", [1, 3])
def test_the_teams_of_one_queue_share_a_saturated_cluster_by_their_weights(
    red_weight, team, other_team, default_queue
):
    for i in range(5):
        Node.objects.create(name=f"n{i}", cpu_millis=4000, memory_mb=8192)  # 20 CPU in all
    other_team.fair_share_weight = red_weight
    other_team.save()  # blue's stays 1
    # Blue's backlog is older, and longer than a cycle reads of one team in a queue
    # (MIN_JOBS_PER_QUEUE), so none of red's jobs would be among the first it reads of
    # the queue.
    backlog(team, default_queue, 400)
    backlog(other_team, default_queue, 400)

    samples = run_rounds([default_queue], rounds=30, seed=5, teams=[team, other_team])

    assert all(total == 20_000 for total in samples[default_queue.name])
    assert Job.objects.filter(team=team, status="pending").exists()
    # From the first cycle on: half of it, or three quarters.
    assert samples["red"][0] == 20_000 * red_weight // (red_weight + 1)
    ratio = sum(samples["red"]) / sum(samples["blue"])
    assert red_weight * 0.9 <= ratio <= red_weight * 1.1, ratio


def test_a_teams_long_backlog_does_not_hide_anothers_newer_jobs(team, other_team, default_queue):
    Node.objects.create(name="n0", cpu_millis=4000, memory_mb=8192)
    backlog(team, default_queue, MIN_JOBS_PER_QUEUE + 50)
    late = Job.objects.create(
        team=other_team, queue=default_queue, name="late", command=["true"], cpu_millis=1000
    )

    result = place_pending_jobs(batch_size=1000)

    late.refresh_from_db()
    assert late.status == "reserved"
    assert result.placed == 4
