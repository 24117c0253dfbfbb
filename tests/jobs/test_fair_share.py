"""Fair share on past usage (`jobs.services.fair_share`): each queue's past share is what
the usage tally says it used, decayed by day, over the cluster's capacity for as long;
the cycle serves the queue that used less, until the other holds that much more now;
with a half-life of 0 the shares go back to 0 and the order to what queues hold now."""

from datetime import UTC, datetime, timedelta

import pytest

from accounts.models import Team
from jobs.models import Job, UsageTally
from jobs.scheduling.cycle import place_pending_jobs
from jobs.scheduling.leader import Scheduler
from jobs.services.fair_share import past_shares_refresh
from nodes.models import Node, NodeStatus
from resources.models import Allocation, Queue
from tests.jobs.metrics_world import scrape

pytestmark = pytest.mark.django_db

DAY = 86400


@pytest.fixture
def queues(team):
    alpha = Queue.objects.create(name="alpha", all_teams=True)
    beta = Queue.objects.create(name="beta", all_teams=True)
    # 4 CPU and 8 GiB up; an offline node's capacity does not count.
    Node.objects.create(name="n1", cpu_millis=4000, memory_mb=8192)
    Node.objects.create(name="gone", cpu_millis=64000, memory_mb=8192, status=NodeStatus.OFFLINE)
    return alpha, beta


def used(queue, team, *, days_ago: int, cpu_seconds: float, memory_mb_seconds: float = 0):
    day = datetime.now(UTC).date() - timedelta(days=days_ago)
    UsageTally.objects.create(
        day=day,
        team=team,
        queue=queue,
        attempts=1,
        succeeded=1,
        run_seconds=cpu_seconds,
        cpu_seconds=cpu_seconds,
        memory_mb_seconds=memory_mb_seconds,
        gpu_seconds=0,
    )


def span_seconds(half_life: float, days: int) -> float:
    """The seconds of the days counted, weighed as their usage is: today's so far, then
    each whole day before."""
    now = datetime.now(UTC)
    today = (now - now.replace(hour=0, minute=0, second=0, microsecond=0)).total_seconds()
    return today + sum(DAY * 0.5 ** (age / half_life) for age in range(1, days))


def test_a_queues_past_share_is_its_decayed_usage_over_the_clusters(queues, team, settings, api):
    alpha, beta = queues
    settings.FAIR_SHARE_HALF_LIFE_DAYS = 1
    # alpha: half the CPU all day yesterday, and all of it the day before (weighed 1/2
    # and 1/4); 4 GiB of memory for an hour yesterday (a smaller share than its CPU's);
    # a day older than 7 half-lives does not count.
    used(alpha, team, days_ago=1, cpu_seconds=2 * DAY, memory_mb_seconds=4096 * 3600)
    used(alpha, team, days_ago=2, cpu_seconds=4 * DAY)
    used(alpha, team, days_ago=7, cpu_seconds=4 * DAY)
    # beta: one CPU for an hour, today.
    used(beta, team, days_ago=0, cpu_seconds=3600)

    changed = past_shares_refresh()
    span = span_seconds(1, 7)
    expected_alpha = (2 * DAY * 0.5 + 4 * DAY * 0.25) / (4 * span)
    expected_beta = 3600 / (4 * span)
    assert changed == {
        "queues": {
            "alpha": pytest.approx(expected_alpha, rel=1e-3),
            "beta": pytest.approx(expected_beta, rel=1e-3),
        },
        # The team's jobs used both queues' (CPU the dominant resource in each).
        "teams": {"blue": pytest.approx(expected_alpha + expected_beta, rel=1e-3)},
    }
    team.refresh_from_db()
    assert team.past_share == pytest.approx(expected_alpha + expected_beta, rel=1e-3)
    alpha.refresh_from_db()
    assert alpha.past_share == pytest.approx(expected_alpha, rel=1e-3)
    assert Queue.objects.get(name="default").past_share == 0
    shown = {q["queue"]: q["past_share"] for q in api.get("/api/resources/usage/").json()["queues"]}
    assert shown == {"alpha": alpha.past_share, "beta": changed["queues"]["beta"], "default": 0}
    shown = [t["past_share"] for t in api.get("/api/resources/usage/").json()["teams"]]
    assert shown == [team.past_share]
    scraped = scrape()
    assert scraped[("scheduler_queue_past_share", (("queue", "alpha"),))] == alpha.past_share
    assert scraped[("scheduler_queue_past_share", (("queue", "default"),))] == 0
    assert scraped[("scheduler_team_past_share", (("team", "blue"),))] == team.past_share

    settings.FAIR_SHARE_HALF_LIFE_DAYS = 0
    assert past_shares_refresh() == {"queues": {"alpha": 0, "beta": 0}, "teams": {"blue": 0}}
    assert set(Queue.objects.values_list("past_share", flat=True)) == {0}
    assert set(Team.objects.values_list("past_share", flat=True)) == {0}
    # Nothing changed, nothing written.
    assert past_shares_refresh() == {"queues": {}, "teams": {}}


def place_one_cpu_jobs(groups) -> dict[str, int]:
    """Four 1-CPU jobs for each (team, queue) of `groups`, in that order (the first
    group's oldest), placed on the 4 CPU of n1 by one cycle; how many of each group were
    placed, by the group's queue name or team slug (whichever differs between them).
    Then it clears the jobs and the allocations."""
    for team, queue in groups:
        Job.objects.bulk_create(
            Job(team=team, queue=queue, name="j", command=["true"], cpu_millis=1000)
            for _ in range(4)
        )
    place_pending_jobs(batch_size=10)
    by_queue = len({queue for _, queue in groups}) > 1
    placed = {
        queue.name if by_queue else team.slug: Allocation.objects.filter(
            queue=queue, team=team
        ).count()
        for team, queue in groups
    }
    Allocation.objects.all().delete()
    Job.objects.all().delete()
    Node.objects.filter(name="n1").update(allocated_cpu_millis=0, allocated_memory_mb=0)
    return placed


def test_the_queue_that_used_less_is_served_first_until_the_other_holds_that_much_more(
    queues, team
):
    alpha, beta = queues
    groups = [(team, alpha), (team, beta)]

    # Equal weights, nothing used before: they take turns.
    assert place_one_cpu_jobs(groups) == {"alpha": 2, "beta": 2}
    # alpha used half the cluster lately: beta is served until it holds half the cluster
    # more than alpha does; then they take turns again (alpha first on a tie, by name).
    Queue.objects.filter(pk=alpha.pk).update(past_share=0.5)
    assert place_one_cpu_jobs(groups) == {"alpha": 1, "beta": 3}
    Queue.objects.filter(pk=alpha.pk).update(past_share=1)
    assert place_one_cpu_jobs(groups) == {"alpha": 0, "beta": 4}


def test_the_team_that_used_less_is_served_first_in_a_queue_they_share(queues, team, other_team):
    alpha, _ = queues
    groups = [(team, alpha), (other_team, alpha)]  # blue's jobs older

    assert place_one_cpu_jobs(groups) == {"blue": 2, "red": 2}
    # Blue used half the cluster lately: red is served until its jobs in the queue hold
    # half the cluster; then they take turns (blue first on a tie, its jobs older).
    Team.objects.filter(pk=team.pk).update(past_share=0.5)
    assert place_one_cpu_jobs(groups) == {"blue": 1, "red": 3}
    Team.objects.filter(pk=team.pk).update(past_share=1)
    assert place_one_cpu_jobs(groups) == {"blue": 0, "red": 4}
    # Weighed by the team's weight, as what it holds now is: at weight 2, a past share of
    # 1 counts as one of 1/2 at weight 1.
    Team.objects.filter(pk=team.pk).update(fair_share_weight=2)
    assert place_one_cpu_jobs(groups) == {"blue": 1, "red": 3}


@pytest.mark.django_db(transaction=True)
def test_the_leader_refreshes_the_past_shares_at_their_interval(queues, team, settings):
    alpha, _ = queues
    settings.FAIR_SHARE_HALF_LIFE_DAYS = 7
    settings.FAIR_SHARE_REFRESH_SECONDS = 60
    settings.METRICS_FOLD_SECONDS = settings.NODE_LOST_CHECK_SECONDS = 0
    settings.RECONCILE_INTERVAL_SECONDS = 0
    used(alpha, team, days_ago=1, cpu_seconds=4 * DAY)
    scheduler = Scheduler(tick_seconds=5, batch_size=10)
    scheduler.maintain()
    first = Queue.objects.get(pk=alpha.pk).past_share
    assert 0 < first < 1
    Queue.objects.filter(pk=alpha.pk).update(past_share=0)
    scheduler.maintain()  # not again before its interval
    assert Queue.objects.get(pk=alpha.pk).past_share == 0
    assert 50 < scheduler.seconds_to_maintenance() <= 60
