"""Properties of reservation and backfill in the planner: the first job that finds no
room gets a reservation, and no job started after it delays it, by time limits."""

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resources.placement import (
    NodeSlot,
    PendingJob,
    QueueState,
    Release,
    Request,
    Resources,
    Strategy,
    Unplaced,
    expected_start,
    fits_now,
    matches_selector,
    plan_placements,
)

from .test_placement import node_slots, small_requests

NOW = 1_000_000.0

# Smaller worlds than test_placement's, so that reservations and backfill are common.
clusters = st.integers(0, 6).flatmap(
    lambda n: st.tuples(*[node_slots(index=i) for i in range(n)]).map(list)
)
queue_specs = st.lists(
    st.tuples(
        st.integers(1, 4),  # weight
        st.integers(0, 1),  # priority
        st.sampled_from(list(Strategy)),
        st.one_of(st.none(), st.integers(0, 8).map(lambda n: n * 500)),  # cpu quota
        st.integers(0, 12),  # pending jobs
    ),
    min_size=1,
    max_size=3,
)
limits = st.one_of(st.none(), st.sampled_from([1.0, 5.0, 30.0, 60.0, 600.0]))
large_requests = st.builds(
    Request,
    cpu_millis=st.sampled_from([2000, 4000, 8000]),
    memory_mb=st.sampled_from([0, 1024, 4096]),
    gpu=st.sampled_from([0, 0, 1]),
)


@st.composite
def running_on(draw, node: NodeSlot):
    """What runs on the node (its used room, split into executions that end by their
    limits), or None for a node with one execution that has no limit."""
    if draw(st.integers(0, 5)) == 0:
        return None
    used = [
        node.cpu_millis - node.free_cpu_millis,
        node.memory_mb - node.free_memory_mb,
        node.gpu - node.free_gpu,
    ]
    if not any(used):
        return []
    count = draw(st.integers(1, 3))
    releases = []
    for i in range(count):
        part = [u // count + (u % count if i == count - 1 else 0) for u in used]
        releases.append(Release(NOW + draw(st.integers(-5, 900)), *part))
    return releases


@st.composite
def worlds(draw):
    nodes = draw(clusters)
    releases = {}
    for node in nodes:
        running = draw(running_on(node))
        if running is not None:
            releases[node.id] = running
    specs = draw(queue_specs)
    queues = {
        i: QueueState(id=i, name=f"q{i}", weight=w, priority=p, strategy=s, quota_cpu_millis=q)
        for i, (w, p, s, q, _) in enumerate(specs)
    }
    jobs = [
        PendingJob(
            id=i * 1000 + j,
            queue_id=i,
            request=draw(st.one_of(small_requests, large_requests)),
            time_limit=draw(limits),
        )
        for i, spec in enumerate(specs)
        for j in range(spec[4])
    ]
    return nodes, releases, queues, jobs


def plan_in(world):
    nodes, releases, queues, jobs = world
    capacity = Resources(
        sum(n.cpu_millis for n in nodes), sum(n.memory_mb for n in nodes), sum(n.gpu for n in nodes)
    )
    return plan_placements(
        jobs=jobs, queues=queues, nodes=nodes, capacity=capacity, releases=releases, now=NOW
    )


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_backfill_never_starts_a_job_that_delays_the_reserved_job(world):
    _, releases, _, _ = world
    before = copy.deepcopy(releases)
    plan = plan_in(world)
    reservation = plan.reservation
    if reservation is None:
        return
    node = reservation.node
    assert node.id in before  # only where every running execution has a limit
    # The node as the plan leaves it: what ran before, and what the plan started there,
    # each ending by its limit (one with no limit never gives its room back).
    after = list(before[node.id])
    for job, chosen in plan.placements:
        if chosen is node and job.time_limit is not None:
            after.append(
                Release(
                    NOW + job.time_limit,
                    job.request.cpu_millis,
                    job.request.memory_mb,
                    job.request.gpu,
                )
            )
    start = expected_start(node, reservation.job.request, after, NOW)
    assert start is not None
    assert start <= reservation.starts_at


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_reservation_and_backfill_keep_capacity_and_quotas(world):
    nodes, _, queues, jobs = world
    free = {n.id: (n.free_cpu_millis, n.free_memory_mb, n.free_gpu) for n in nodes}
    plan = plan_in(world)
    held: dict[int, list[int]] = {n.id: [0, 0, 0] for n in nodes}
    per_queue: dict[int, int] = {}
    for job, node in plan.placements:
        assert matches_selector(node, job.request.node_selector)
        held[node.id][0] += job.request.cpu_millis
        held[node.id][1] += job.request.memory_mb
        held[node.id][2] += job.request.gpu
        per_queue[job.queue_id] = per_queue.get(job.queue_id, 0) + job.request.cpu_millis
    for node_id, taken in held.items():
        assert all(t <= f for t, f in zip(taken, free[node_id], strict=True))
    for qid, cpu in per_queue.items():
        quota = queues[qid].quota_cpu_millis
        assert quota is None or cpu <= quota
    placed = {job.id for job, _ in plan.placements}
    assert placed | set(plan.waiting) == {job.id for job in jobs}
    assert not placed & set(plan.waiting)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_one_job_is_reserved_and_the_held_back_would_fit_only_its_node(world):
    plan = plan_in(world)
    reserved = [i for i, reason in plan.waiting.items() if reason is Unplaced.RESERVATION]
    held = [i for i, reason in plan.waiting.items() if reason is Unplaced.WOULD_DELAY_RESERVATION]
    if plan.reservation is None:
        assert not reserved and not held and not plan.held
        return
    assert reserved == [plan.reservation.job.id]
    assert set(held) == set(plan.held)
    assert set(plan.held.values()) <= {plan.reservation.job.id}
    by_id = {job.id: job for job in world[3]}
    for job_id in held:
        job = by_id[job_id]
        # Only the reserved node could take it (nothing changed since it was held:
        # free room only shrinks), and it would still run at the reserved start.
        assert job.time_limit is None or NOW + job.time_limit > plan.reservation.starts_at
        for node in world[0]:
            if node is not plan.reservation.node:
                assert not (
                    fits_now(node, job.request)
                    and matches_selector(node, job.request.node_selector)
                )


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_without_time_limits_known_the_plan_is_the_plan_of_before(world):
    nodes, _, queues, jobs = world
    capacity = Resources(
        sum(n.cpu_millis for n in nodes), sum(n.memory_mb for n in nodes), sum(n.gpu for n in nodes)
    )
    args = (copy.deepcopy(nodes), copy.deepcopy(queues))
    plain = plan_placements(jobs=jobs, queues=args[1], nodes=args[0], capacity=capacity)
    unknown = plan_placements(
        jobs=jobs, queues=queues, nodes=nodes, capacity=capacity, releases={}, now=NOW
    )
    assert plain.waiting == unknown.waiting
    assert [(j.id, n.id) for j, n in plain.placements] == [
        (j.id, n.id) for j, n in unknown.placements
    ]


def four_cpu_node():
    return NodeSlot(
        id=1,
        name="node-a",
        cpu_millis=4000,
        memory_mb=8192,
        gpu=0,
        free_cpu_millis=1000,
        free_memory_mb=8192,
        free_gpu=0,
    )


def test_a_short_job_backfills_before_the_reservation_and_a_long_one_is_held():
    node = four_cpu_node()
    # Three 1-CPU executions end, by their limits, 10, 20 and 30 seconds from now.
    releases = {1: [Release(NOW + t, 1000, 0) for t in (10, 20, 30)]}
    big = PendingJob(1, 0, Request(4000, 0), time_limit=60)
    short = PendingJob(2, 0, Request(1000, 0), time_limit=25)
    long = PendingJob(3, 0, Request(1000, 0), time_limit=31)
    plan = plan_placements(
        jobs=[big, long, short],
        queues={0: QueueState(id=0, name="q")},
        nodes=[node],
        capacity=Resources(4000, 8192),
        releases=releases,
        now=NOW,
    )
    assert plan.reservation is not None
    assert plan.reservation.job is big
    assert plan.reservation.starts_at == NOW + 30
    assert [job.id for job, _ in plan.placements] == [2]
    assert plan.waiting == {1: Unplaced.RESERVATION, 3: Unplaced.WOULD_DELAY_RESERVATION}
    assert plan.held == {3: 1}


def test_a_job_uses_room_the_reservation_does_not_need_whatever_its_limit():
    node = NodeSlot(
        id=1,
        name="node-a",
        cpu_millis=8000,
        memory_mb=0,
        gpu=0,
        free_cpu_millis=1000,
        free_memory_mb=0,
        free_gpu=0,
    )
    releases = {1: [Release(NOW + 10, 7000, 0)]}
    plan = plan_placements(
        jobs=[
            PendingJob(1, 0, Request(6000, 0), time_limit=60),
            PendingJob(2, 0, Request(1000, 0), time_limit=None),
            PendingJob(3, 0, Request(1000, 0), time_limit=None),
        ],
        queues={0: QueueState(id=0, name="q")},
        nodes=[node],
        capacity=Resources(8000, 0),
        releases=releases,
        now=NOW,
    )
    # 8 CPU at the reserved start, 6 of them for the reserved job: one more may stay.
    assert [job.id for job, _ in plan.placements] == [2]
    assert plan.waiting == {1: Unplaced.RESERVATION, 3: Unplaced.INSUFFICIENT_CAPACITY}


def test_no_reservation_on_a_node_running_something_without_a_limit():
    node = four_cpu_node()
    plan = plan_placements(
        jobs=[
            PendingJob(1, 0, Request(4000, 0), time_limit=60),
            PendingJob(2, 0, Request(1000, 0), time_limit=600),
        ],
        queues={0: QueueState(id=0, name="q")},
        nodes=[node],
        capacity=Resources(4000, 8192),
        releases={},
        now=NOW,
    )
    assert plan.reservation is None
    assert plan.waiting == {1: Unplaced.INSUFFICIENT_CAPACITY}
