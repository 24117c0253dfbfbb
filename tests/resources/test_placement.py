"""Properties of the placement functions, over generated clusters, queues and requests."""

import copy
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from resources.placement import (
    NodeIndex,
    NodeSlot,
    PendingJob,
    QueueState,
    Request,
    Resources,
    Strategy,
    Unplaced,
    choose_node,
    dominant_share,
    fits_now,
    free_fraction_after,
    matches_selector,
    plan_placements,
    queue_rank,
    smallest_request,
)

ZONES = ["a", "b", "c"]
FREE_QUARTERS = [0, 1, 2, 3, 4]


@st.composite
def node_slots(draw, index=0):
    # Few distinct sizes, so that many nodes share a shape as in real clusters.
    cpu = draw(st.sampled_from([1, 2, 4, 8, 64])) * 1000
    memory = draw(st.sampled_from([0, 1024, 4096, 65536]))
    gpu = draw(st.sampled_from([0, 0, 1, 4]))
    return NodeSlot(
        id=index,
        name=f"n{draw(st.integers(0, 999)):03d}-{index}",
        cpu_millis=cpu,
        memory_mb=memory,
        gpu=gpu,
        # Free room on a few fixed fractions of capacity, so that exact ties are common.
        free_cpu_millis=cpu * draw(st.sampled_from(FREE_QUARTERS)) // 4,
        free_memory_mb=memory * draw(st.sampled_from(FREE_QUARTERS)) // 4,
        free_gpu=draw(st.integers(0, gpu)),
        labels={"zone": draw(st.sampled_from(ZONES))},
    )


clusters = st.integers(0, 16).flatmap(
    lambda n: st.tuples(*[node_slots(index=i) for i in range(n)]).map(list)
)
selectors = st.one_of(st.just({}), st.sampled_from([*ZONES, "z"]).map(lambda z: {"zone": z}))
requests = st.builds(
    Request,
    cpu_millis=st.integers(1, 16_000),
    memory_mb=st.integers(0, 64 * 1024),
    gpu=st.integers(0, 2),
    node_selector=selectors,
)
small_requests = st.builds(
    Request,
    cpu_millis=st.sampled_from([250, 500, 1000, 2000]),
    memory_mb=st.sampled_from([0, 128, 512, 2048]),
    gpu=st.sampled_from([0, 0, 0, 1]),
    node_selector=selectors,
)


def fitting(nodes, request):
    return [n for n in nodes if fits_now(n, request) and matches_selector(n, request.node_selector)]


@given(clusters, requests, st.sampled_from(list(Strategy)))
def test_it_never_places_where_the_request_does_not_fit(nodes, request, strategy):
    choice = choose_node(nodes, request, strategy)
    if isinstance(choice, NodeSlot):
        assert fits_now(choice, request)
        assert matches_selector(choice, request.node_selector)
    else:
        assert not fitting(nodes, request)


@given(clusters, requests)
def test_it_names_the_selector_when_no_node_matches_it(nodes, request):
    choice = choose_node(nodes, request)
    any_match = any(matches_selector(n, request.node_selector) for n in nodes)
    if choice is Unplaced.NODE_SELECTOR:
        assert request.node_selector and not any_match
    if choice is Unplaced.INSUFFICIENT_CAPACITY:
        assert any_match or not request.node_selector


@given(clusters, requests)
def test_binpack_picks_the_fullest_node_that_fits_and_spread_the_emptiest(nodes, request):
    candidates = fitting(nodes, request)
    packed = choose_node(nodes, request, Strategy.BINPACK)
    spread = choose_node(nodes, request, Strategy.SPREAD)
    if not candidates:
        return
    left = [free_fraction_after(n, request) for n in candidates]
    assert free_fraction_after(packed, request) == min(left)
    assert free_fraction_after(spread, request) == max(left)
    # Ties go to the lower name, whichever way the scores point.
    assert packed.name == min(
        n.name for n in candidates if free_fraction_after(n, request) == min(left)
    )
    assert spread.name == min(
        n.name for n in candidates if free_fraction_after(n, request) == max(left)
    )


@given(clusters, requests, st.sampled_from(list(Strategy)))
def test_the_choice_does_not_depend_on_the_order_of_nodes(nodes, request, strategy):
    forward = choose_node(nodes, request, strategy)
    backward = choose_node(list(reversed(nodes)), request, strategy)
    assert getattr(forward, "name", forward) == getattr(backward, "name", backward)


def test_a_gpu_request_only_lands_on_a_node_with_a_free_gpu():
    cpu_only = NodeSlot(1, "cpu", 8000, 8192, 0, 8000, 8192, 0)
    gpu_busy = NodeSlot(2, "gpu-busy", 8000, 8192, 1, 8000, 8192, 0)
    gpu_free = NodeSlot(3, "gpu-free", 8000, 8192, 1, 1000, 1024, 1)
    assert choose_node([cpu_only, gpu_busy, gpu_free], Request(500, 100, gpu=1)) is gpu_free


def test_binpack_keeps_gpu_nodes_for_gpu_jobs():
    cpu_only = NodeSlot(1, "z-cpu", 8000, 8192, 0, 8000, 8192, 0)
    gpu = NodeSlot(2, "a-gpu", 8000, 8192, 1, 8000, 8192, 1)
    assert choose_node([cpu_only, gpu], Request(1000, 100)) is cpu_only


@settings(max_examples=300)
@given(
    clusters,
    st.lists(st.tuples(small_requests, st.sampled_from(list(Strategy))), max_size=60),
)
def test_the_node_index_chooses_exactly_what_choose_node_chooses(nodes, steps):
    """The fast structure against the plain rule, request after request."""
    plain = copy.deepcopy(nodes)
    by_id = {n.id: n for n in plain}
    index = NodeIndex(nodes, smallest_request(r for r, _ in steps))
    for request, strategy in steps:
        expected = choose_node(plain, request, strategy)
        got = index.choose(request, strategy)
        if isinstance(expected, Unplaced):
            assert got == expected
            continue
        assert isinstance(got, NodeSlot) and got.id == expected.id, (request, strategy)
        index.take(got, request)
        by_id[expected.id].take(request)
    assert [(n.free_cpu_millis, n.free_memory_mb, n.free_gpu) for n in nodes] == [
        (n.free_cpu_millis, n.free_memory_mb, n.free_gpu) for n in plain
    ]


# --- Queues and fair share ------------------------------------------------------------


def test_the_queue_furthest_below_its_share_goes_first():
    capacity = Resources(10_000, 10_000, 0)
    heavy = QueueState(1, "heavy", weight=3, allocated=Resources(3000, 0))  # 0.3 / 3 = 0.1
    light = QueueState(2, "light", weight=1, allocated=Resources(2000, 0))  # 0.2 / 1 = 0.2
    assert sorted([light, heavy], key=lambda q: queue_rank(q, capacity)) == [heavy, light]
    # The dominant resource counts: memory here.
    light.allocated = Resources(0, 500)  # 0.05
    assert sorted([heavy, light], key=lambda q: queue_rank(q, capacity)) == [light, heavy]


def test_a_higher_priority_queue_goes_first_whatever_its_share():
    capacity = Resources(10_000, 10_000, 0)
    urgent = QueueState(1, "urgent", priority=5, allocated=Resources(9000, 0))
    idle = QueueState(2, "idle", allocated=Resources(0, 0))
    assert sorted([idle, urgent], key=lambda q: queue_rank(q, capacity)) == [urgent, idle]


def test_dominant_share_ignores_resources_the_cluster_does_not_have():
    assert dominant_share(Resources(500, 100, 0), Resources(1000, 1000, 0)) == Fraction(1, 2)
    assert dominant_share(Resources(0, 0, 0), Resources(0, 0, 0)) == 0


queue_specs = st.lists(
    st.tuples(
        st.integers(1, 4),  # weight
        st.integers(0, 1),  # priority
        st.sampled_from(list(Strategy)),
        st.one_of(st.none(), st.integers(0, 8).map(lambda n: n * 500)),  # cpu quota
        st.integers(0, 30),  # pending jobs
    ),
    min_size=1,
    max_size=4,
)


def make_queues(specs):
    return {
        i: QueueState(
            id=i,
            name=f"q{i}",
            weight=weight,
            priority=priority,
            strategy=strategy,
            quota_cpu_millis=quota,
        )
        for i, (weight, priority, strategy, quota, _) in enumerate(specs)
    }


@settings(max_examples=200)
@given(clusters, queue_specs, st.data())
def test_a_plan_never_oversubscribes_a_node_or_a_quota_and_says_why_jobs_wait(nodes, specs, data):
    queues = make_queues(specs)
    jobs = [
        PendingJob(id=len(specs) * 100 + i * 100 + j, queue_id=i, request=data.draw(small_requests))
        for i, spec in enumerate(specs)
        for j in range(spec[4])
    ]
    before = copy.deepcopy(nodes)
    capacity = Resources(sum(n.cpu_millis for n in nodes), sum(n.memory_mb for n in nodes), 0)
    plan = plan_placements(jobs=jobs, queues=queues, nodes=nodes, capacity=capacity)

    placed_ids = [job.id for job, _ in plan.placements]
    assert len(placed_ids) == len(set(placed_ids))
    assert set(placed_ids) | set(plan.waiting) == {job.id for job in jobs}
    assert not set(placed_ids) & set(plan.waiting)
    for job, node in plan.placements:
        assert matches_selector(node, job.request.node_selector)
    held: dict[int, list[int]] = {n.id: [0, 0, 0] for n in before}
    per_queue: dict[int, int] = {}
    for job, node in plan.placements:
        held[node.id][0] += job.request.cpu_millis
        held[node.id][1] += job.request.memory_mb
        held[node.id][2] += job.request.gpu
        per_queue[job.queue_id] = per_queue.get(job.queue_id, 0) + job.request.cpu_millis
    for node in before:
        cpu, memory, gpu = held[node.id]
        assert cpu <= node.free_cpu_millis
        assert memory <= node.free_memory_mb
        assert gpu <= node.free_gpu
    for qid, cpu in per_queue.items():
        quota = queues[qid].quota_cpu_millis
        assert quota is None or cpu <= quota
    # Every reason is still true once the plan is done (free room only shrank).
    by_id = {job.id: job for job in jobs}
    for job_id, reason in plan.waiting.items():
        job = by_id[job_id]
        if reason is Unplaced.QUEUE_QUOTA:
            assert not queues[job.queue_id].within_quota(job.request)
        elif reason is Unplaced.NODE_SELECTOR:
            assert not any(matches_selector(n, job.request.node_selector) for n in nodes)
        else:
            assert reason is Unplaced.INSUFFICIENT_CAPACITY
            assert not fitting(nodes, job.request)


@settings(max_examples=200)
@given(
    st.integers(1, 8),
    st.lists(st.tuples(st.integers(1, 5), st.integers(0, 1)), min_size=2, max_size=4),
)
def test_equal_jobs_are_shared_by_weight_and_priority_comes_first(node_count, specs):
    """Progressive filling: with equal jobs and more demand than room, no queue ends more
    than one job ahead of its weighted share, and a lower tier gets nothing while a
    higher one still waits."""
    nodes = [NodeSlot(i, f"n{i}", 4000, 4096, 0, 4000, 4096, 0) for i in range(node_count)]
    queues = {
        i: QueueState(id=i, name=f"q{i}", weight=w, priority=p) for i, (w, p) in enumerate(specs)
    }
    demand = node_count * 4 + 1  # each queue alone could fill the cluster
    jobs = [
        PendingJob(id=i * 1000 + j, queue_id=i, request=Request(1000, 100))
        for i in queues
        for j in range(demand)
    ]
    capacity = Resources(node_count * 4000, node_count * 4096, 0)
    plan = plan_placements(jobs=jobs, queues=queues, nodes=nodes, capacity=capacity)
    placed = dict.fromkeys(queues, 0)
    for job, _ in plan.placements:
        placed[job.queue_id] += 1
    assert sum(placed.values()) == node_count * 4
    for a in queues.values():
        for b in queues.values():
            if a is b or placed[a.id] == 0:
                continue
            if a.priority == b.priority:
                assert Fraction(placed[a.id] - 1, a.weight) <= Fraction(placed[b.id], b.weight)
            elif a.priority < b.priority:
                assert placed[b.id] == demand  # a got something only once b had all it wanted


@settings(max_examples=100)
@given(
    st.integers(1, 6),
    st.lists(
        st.tuples(st.integers(0, 6), st.integers(0, 1), st.integers(1, 4)), min_size=2, max_size=4
    ),
)
def test_the_teams_of_a_queue_share_its_room_by_weight_and_priority_comes_first(node_count, specs):
    """Within one queue, with equal jobs given oldest team first and more demand than
    room: no team ends more than one job ahead of another of equal priority, for their
    weights (counting what each held before), whatever the order the jobs came in; a
    team's job of higher priority goes before any of lower priority."""
    nodes = [NodeSlot(i, f"n{i}", 4000, 4096, 0, 4000, 4096, 0) for i in range(node_count)]
    capacity = Resources(node_count * 4000 * 2, node_count * 4096 * 2, 0)
    held = {t: Resources(1000 * h, 100 * h, 0) for t, (h, _, _) in enumerate(specs)}
    weights = {t: w for t, (_, _, w) in enumerate(specs)}
    queue = QueueState(id=1, name="shared", team_allocated=dict(held), team_weights=weights)
    demand = node_count * 4 + 1  # each team alone could fill the room
    jobs = sorted(
        (
            PendingJob(
                id=t * 1000 + j, queue_id=1, request=Request(1000, 100), team_id=t, priority=p
            )
            for t, (_, p, _) in enumerate(specs)
            for j in range(demand)
        ),
        key=lambda job: (-job.priority, job.id),  # the cycle's order: priority, then age
    )
    plan = plan_placements(jobs=jobs, queues={1: queue}, nodes=nodes, capacity=capacity)
    placed = dict.fromkeys(range(len(specs)), 0)
    for job, _ in plan.placements:
        placed[job.team_id] += 1
    assert sum(placed.values()) == node_count * 4
    for a, (held_a, priority_a, weight_a) in enumerate(specs):
        for b, (held_b, priority_b, weight_b) in enumerate(specs):
            if a == b or placed[a] == 0:
                continue
            if priority_a == priority_b:
                before_last = Fraction(held_a + placed[a] - 1, weight_a)
                assert before_last <= Fraction(held_b + placed[b], weight_b), (a, b, placed)
            elif priority_a < priority_b:
                assert placed[b] == demand  # a got something only once b had all it wanted
    for t, amounts in held.items():
        assert queue.team_allocated[t] == amounts + Request(1000 * placed[t], 100 * placed[t])


def test_a_quota_caps_a_queue_on_an_idle_cluster():
    nodes = [NodeSlot(1, "big", 64_000, 65_536, 0, 64_000, 65_536, 0)]
    capped = QueueState(1, "capped", quota_cpu_millis=2000)
    jobs = [PendingJob(i, 1, Request(1000, 100)) for i in range(5)]
    plan = plan_placements(
        jobs=jobs, queues={1: capped}, nodes=nodes, capacity=Resources(64_000, 65_536, 0)
    )
    assert [job.id for job, _ in plan.placements] == [0, 1]
    assert plan.waiting == dict.fromkeys((2, 3, 4), Unplaced.QUEUE_QUOTA)


def test_a_queue_blocked_by_a_large_job_still_places_smaller_ones_behind_it():
    nodes = [NodeSlot(1, "n", 2000, 4096, 0, 2000, 4096, 0)]
    queue = QueueState(1, "q")
    jobs = [PendingJob(1, 1, Request(4000, 100)), PendingJob(2, 1, Request(1000, 100))]
    plan = plan_placements(
        jobs=jobs, queues={1: queue}, nodes=nodes, capacity=Resources(2000, 4096, 0)
    )
    assert [job.id for job, _ in plan.placements] == [2]
    assert plan.waiting == {1: Unplaced.INSUFFICIENT_CAPACITY}


def test_spread_queues_spread_and_binpack_queues_pack():
    def fresh():
        return [NodeSlot(i, f"n{i}", 4000, 4096, 0, 4000, 4096, 0) for i in range(4)]

    jobs = [PendingJob(i, 1, Request(1000, 100)) for i in range(4)]
    capacity = Resources(16_000, 16_384, 0)
    spread = plan_placements(
        jobs=jobs,
        queues={1: QueueState(1, "s", strategy=Strategy.SPREAD)},
        nodes=fresh(),
        capacity=capacity,
    )
    packed = plan_placements(
        jobs=jobs, queues={1: QueueState(1, "b")}, nodes=fresh(), capacity=capacity
    )
    assert sorted(node.name for _, node in spread.placements) == ["n0", "n1", "n2", "n3"]
    assert {node.name for _, node in packed.placements} == {"n0"}
