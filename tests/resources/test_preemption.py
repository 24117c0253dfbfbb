"""Properties of the preemption planner: it evicts only preemptible executions of lower
priority (or, reclaiming, of queues above their deserved share), the fewest that make
room on the node (of those, the set whose last victim in victim order comes earliest),
and after the evictions the job fits, with no room given twice."""

import copy
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resources import preemption as rules
from resources.placement import (
    NodeSlot,
    PendingJob,
    QueueState,
    Request,
    Resources,
    fits_now,
    matches_selector,
)
from resources.preemption import (
    Running,
    Shares,
    Waiting,
    holds,
    plan_preemptions,
    room_after,
    victim_order,
    victims_on_node,
)

CPU = st.sampled_from([500, 1000, 2000])
MEMORY = st.sampled_from([128, 256, 512])


def drawn_running(draw, running, node_id, cpu_millis, memory_mb, preemptible) -> Running:
    """The next execution of `running` on the node, its queue, priority (0 to 3), start
    and whether it is preemptible (by that strategy) drawn."""
    return Running(
        id=len(running) + 1,
        job_id=1000 + len(running),
        node_id=node_id,
        queue_id=draw(st.integers(1, 2)),
        priority=draw(st.integers(0, 3)),
        preemptible=draw(preemptible),
        started_at=float(draw(st.integers(0, 100))),
        cpu_millis=cpu_millis,
        memory_mb=memory_mb,
    )


@st.composite
def worlds(draw):
    """Full-ish nodes with executions on them, and waiting jobs."""
    nodes, running = [], []
    for index in range(draw(st.integers(1, 4))):
        cpu, memory = draw(st.sampled_from([(2000, 1024), (4000, 2048), (1000, 512)]))
        labels = draw(st.sampled_from([{}, {"zone": "a"}, {"zone": "b"}]))
        free_cpu, free_memory = cpu, memory
        for _ in range(draw(st.integers(0, 5))):
            want_cpu, want_memory = draw(CPU), draw(MEMORY)
            if want_cpu > free_cpu or want_memory > free_memory:
                continue
            free_cpu -= want_cpu
            free_memory -= want_memory
            running.append(
                drawn_running(draw, running, index + 1, want_cpu, want_memory, st.booleans())
            )
        nodes.append(
            NodeSlot(index + 1, f"node-{index}", cpu, memory, 0, free_cpu, free_memory, 0, labels)
        )
    waiting = [
        Waiting(
            PendingJob(
                id=1 + i,
                queue_id=draw(st.integers(1, 2)),
                request=Request(
                    draw(CPU),
                    draw(MEMORY),
                    0,
                    draw(st.sampled_from([{}, {}, {"zone": "a"}])),
                ),
            ),
            priority=draw(st.integers(0, 4)),
        )
        for i in range(draw(st.integers(1, 4)))
    ]
    waiting.sort(key=lambda w: -w.priority)
    return nodes, running, waiting


def _shares(nodes, running, weights=(1, 1)):
    queues = {
        qid: QueueState(id=qid, name=f"q{qid}", weight=weight)
        for qid, weight in zip((1, 2), weights, strict=True)
    }
    for execution in running:
        queues[execution.queue_id].allocated += execution.held
    capacity = Resources(sum(n.cpu_millis for n in nodes), sum(n.memory_mb for n in nodes), 0)
    return Shares(capacity=capacity, queues=queues, active={1, 2})


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_it_evicts_only_lower_priority_preemptible_executions_a_minimal_set_and_room_holds(world):
    nodes, running, waiting = world
    before = {n.id: copy.copy(n) for n in nodes}
    by_id = {r.id: r for r in running}
    plan = plan_preemptions(waiting=waiting, nodes=nodes, running=running)
    priority_of = {w.job.id: w.priority for w in waiting}
    evicted = [v.id for p in plan for v in p.victims]
    assert len(evicted) == len(set(evicted)), "a victim evicted twice"
    current = copy.deepcopy(before)  # each node as the next preemption on it finds it
    taken: set[int] = set()
    for preemption in plan:
        job, node = preemption.job, current[preemption.node.id]
        assert preemption.victims, "a preemption without victims"
        assert matches_selector(node, job.request.node_selector)
        for victim in preemption.victims:
            assert victim is by_id[victim.id]
            assert victim.preemptible
            assert victim.priority < priority_of[job.id]
            assert victim.node_id == node.id
        # Minimal: no victim could be spared; the fewest: no smaller set of the ones it
        # could evict there would do.
        for spared in preemption.victims:
            rest = [v for v in preemption.victims if v is not spared]
            assert not holds(room_after(node, rest), job)
        evictable = [
            r
            for r in running
            if r.node_id == node.id
            and r.preemptible
            and r.priority < priority_of[job.id]
            and r.id not in taken
        ]
        for fewer in range(len(preemption.victims)):
            for victims in itertools.combinations(evictable, fewer):
                assert not holds(room_after(node, victims), job)
        taken.update(v.id for v in preemption.victims)
        room = room_after(node, preemption.victims)
        node.free_cpu_millis = room.cpu_millis - job.request.cpu_millis
        node.free_memory_mb = room.memory_mb - job.request.memory_mb
    # Capacity: on each node, what the preemptors need fits in the room free now and
    # freed by their victims.
    for node_id, node in before.items():
        here = [p for p in plan if p.node.id == node_id]
        room = room_after(node, [v for p in here for v in p.victims])
        wanted = sum((p.job.request for p in here), Resources())
        assert wanted.cpu_millis <= room.cpu_millis and wanted.memory_mb <= room.memory_mb
    for node in nodes:
        assert node.free_cpu_millis >= 0 and node.free_memory_mb >= 0


@st.composite
def contested_worlds(draw):
    """Nodes with little or no room left, mostly running preemptible work of lower
    priority than the one waiting job: several nodes could make room for it."""
    nodes, running = [], []
    for index in range(draw(st.integers(2, 6))):
        cpu, memory = draw(st.sampled_from([(2000, 1024), (4000, 2048), (3000, 1536)]))
        free_cpu, free_memory = cpu, memory
        while free_cpu >= 500 and free_memory >= 128 and draw(st.integers(0, 9)):
            want_cpu = min(draw(CPU), free_cpu)
            want_memory = min(draw(MEMORY), free_memory)
            free_cpu -= want_cpu
            free_memory -= want_memory
            mostly = st.integers(0, 4).map(bool)  # preemptible four times in five
            running.append(drawn_running(draw, running, index + 1, want_cpu, want_memory, mostly))
        nodes.append(
            NodeSlot(index + 1, f"node-{index}", cpu, memory, 0, free_cpu, free_memory, 0, {})
        )
    request = Request(draw(st.sampled_from([1000, 1500, 2000, 3000])), draw(MEMORY))
    waiting = [Waiting(PendingJob(id=1, queue_id=draw(st.integers(1, 2)), request=request), 4)]
    return nodes, running, waiting


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(worlds(), contested_worlds()), st.booleans())
def test_of_the_nodes_it_takes_the_one_with_the_fewest_then_lowest_victims(world, reclaim):
    """The node chosen is the best by (how many victims, their highest priority, name)
    of all the nodes, each with the victims it would get: the planner's shortcut past
    nodes that cannot beat the best so far changes no choice."""
    nodes, running, waiting = world
    entry = waiting[0]
    shares = _shares(nodes, running) if reclaim else None
    usable = [
        n
        for n in nodes
        if matches_selector(n, entry.job.request.node_selector)
        and rules.could_hold(n, entry.job.request)
    ]
    plan = plan_preemptions(
        waiting=[entry], nodes=copy.deepcopy(nodes), running=running, shares=shares, limit=1
    )
    if any(fits_now(n, entry.job.request) for n in usable) or (
        shares is not None and not shares.within_quota(entry.job)
    ):
        assert plan == []
        return
    fresh = _shares(nodes, running)
    may_reclaim = shares is not None and fresh.may_reclaim(entry.job)
    keys = []
    for node in usable:
        candidates = [
            r
            for r in running
            if r.node_id == node.id and rules.may_evict(r, entry, reclaim=may_reclaim, shares=fresh)
        ]
        victims = victims_on_node(node, entry.job, candidates)
        if victims:
            keys.append((len(victims), max(v.priority for v in victims), node.name, victims))
    if not keys:
        assert plan == []
        return
    *_, name, victims = min(keys, key=lambda key: key[:3])
    (preemption,) = plan
    assert (preemption.node.name, preemption.victims) == (name, victims)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_a_job_that_fits_somewhere_or_has_no_eligible_victims_preempts_nothing_there(world):
    nodes, running, waiting = world
    job = waiting[0]
    plan = plan_preemptions(waiting=[job], nodes=copy.deepcopy(nodes), running=running)
    request = job.job.request
    if any(fits_now(n, request) and matches_selector(n, request.node_selector) for n in nodes):
        assert plan == []
    for node in nodes:
        if matches_selector(node, job.job.request.node_selector):
            candidates = [
                r
                for r in running
                if r.node_id == node.id and r.preemptible and r.priority < job.priority
            ]
            if fits_now(node, job.job.request) or not candidates:
                assert all(p.node.id != node.id for p in plan)


def test_it_takes_the_lowest_priority_then_the_most_recently_started():
    node = NodeSlot(1, "n", 2000, 1024, 0, 0, 0, 0)
    old_low = Running(1, 11, 1, 1, 0, True, 10.0, 1000, 512)
    new_low = Running(2, 12, 1, 1, 0, True, 20.0, 1000, 512)
    job = PendingJob(99, 1, Request(1000, 512))
    assert victims_on_node(node, job, [old_low, new_low]) == (new_low,)
    higher = Running(3, 13, 1, 1, 1, True, 30.0, 1000, 512)
    assert victims_on_node(node, job, [higher, old_low]) == (old_low,)


def test_it_spares_a_victim_it_can_do_without():
    node = NodeSlot(1, "n", 4000, 2048, 0, 0, 0, 0)
    small = Running(1, 11, 1, 1, 0, True, 10.0, 1000, 512)
    large = Running(2, 12, 1, 1, 1, True, 10.0, 3000, 1536)
    job = PendingJob(99, 1, Request(2000, 1024))
    # The small one comes first in victim order but is not enough; the large one is,
    # alone: the small one is spared.
    assert victims_on_node(node, job, [small, large]) == (large,)


def test_one_victim_that_makes_room_beats_two_earlier_in_victim_order():
    node = NodeSlot(1, "n", 8000, 8192, 0, 0, 0, 0)
    first = Running(1, 11, 1, 1, 0, True, 30.0, 2000, 1024)
    second = Running(2, 12, 1, 1, 0, True, 20.0, 2000, 1024)
    large = Running(3, 13, 1, 1, 1, True, 10.0, 4000, 2048)
    job = PendingJob(99, 1, Request(4000, 2048))
    # Taking the earliest until the job fits takes the two 2-CPU ones, and neither can
    # be spared; the 4-CPU one alone makes room.
    two, four = (2000, 1024, 0), (4000, 2048, 0)
    assert rules._greedy_then_spare([two, two, four], four) == [0, 1]
    assert victims_on_node(node, job, [large, second, first]) == (large,)


def test_of_the_fewest_it_stops_the_set_whose_highest_priority_victim_is_lowest():
    node = NodeSlot(1, "n", 8000, 8192, 0, 0, 0, 0)
    lowest = Running(1, 11, 1, 1, 0, True, 10.0, 3000, 1024)
    newer = Running(2, 12, 1, 1, 1, True, 20.0, 2000, 2048)
    older = Running(3, 13, 1, 1, 1, True, 10.0, 2000, 2048)
    highest = Running(4, 14, 1, 1, 2, True, 10.0, 1000, 3072)
    job = PendingJob(99, 1, Request(4000, 4096))
    # Two victims are needed: the lowest and the highest would do, and so would the two
    # of priority 1, whose highest priority is lower.
    assert victims_on_node(node, job, [highest, older, newer, lowest]) == (newer, older)


def test_a_large_job_stops_two_large_executions_rather_than_thirty_two_small_ones():
    node = NodeSlot(1, "n", 64000, 65536, 0, 0, 0, 0)
    small = [Running(1 + i, 100 + i, 1, 1, 0, True, float(i), 500, 512) for i in range(96)]
    large = [Running(200 + i, 300 + i, 1, 1, 1, True, float(i), 8000, 8192) for i in range(2)]
    job = PendingJob(99, 1, Request(16000, 16384))
    # Taking the earliest until the job fits would stop 32 small ones. With 98
    # candidates the search has a step budget, and two shapes need few of its steps.
    assert len(small) + len(large) > rules.FEWEST_EXACT_UP_TO
    assert victims_on_node(node, job, small + large) == tuple(reversed(large))


def test_cut_short_the_search_falls_back_to_the_earliest_with_none_for_nothing(monkeypatch):
    node = NodeSlot(1, "n", 64000, 65536, 0, 0, 0, 0)
    small = [Running(1 + i, 100 + i, 1, 1, 0, True, float(i), 500, 512) for i in range(32)]
    large = [Running(200 + i, 300 + i, 1, 1, 1, True, float(i), 8000, 8192) for i in range(2)]
    job = PendingJob(99, 1, Request(16000, 16384))
    monkeypatch.setattr(rules, "FEWEST_SEARCH_STEPS", 0)
    # No step to take: the 32 small ones, newest first, all needed.
    assert victims_on_node(node, job, small + large) == tuple(reversed(small))


def test_non_preemptible_and_equal_priority_executions_are_never_victims():
    node = NodeSlot(1, "n", 2000, 1024, 0, 0, 0, 0)
    pinned = Running(1, 11, 1, 1, 0, False, 10.0, 1000, 512)
    equal = Running(2, 12, 1, 1, 5, True, 10.0, 1000, 512)
    waiting = [Waiting(PendingJob(99, 1, Request(1000, 512)), priority=5)]
    assert plan_preemptions(waiting=waiting, nodes=[node], running=[pinned, equal]) == []


def test_a_queue_below_its_share_reclaims_from_one_above_regardless_of_priority():
    nodes = [NodeSlot(1, "n", 2000, 1024, 0, 0, 0, 0)]
    # Queue 2 holds the whole cluster with high-priority preemptible work; queue 1,
    # of equal weight, holds nothing.
    borrowed = [
        Running(1, 11, 1, 2, 9, True, 10.0, 1000, 512),
        Running(2, 12, 1, 2, 9, True, 20.0, 1000, 512),
    ]
    waiting = [Waiting(PendingJob(99, 1, Request(1000, 512)), priority=0)]
    assert plan_preemptions(waiting=waiting, nodes=copy.deepcopy(nodes), running=borrowed) == []
    shares = _shares(nodes, borrowed)
    plan = plan_preemptions(waiting=waiting, nodes=nodes, running=borrowed, shares=shares)
    assert [v.id for p in plan for v in p.victims] == [2]  # the newest
    # With the job, queue 1 would hold half: its deserved share. Another job would take
    # it beyond: no more reclaim for it.
    more = [Waiting(PendingJob(100, 1, Request(1000, 512)), priority=0)]
    assert plan_preemptions(waiting=more, nodes=nodes, running=borrowed, shares=shares) == []


def test_a_job_whose_queue_holds_its_quota_preempts_nothing():
    nodes = [NodeSlot(1, "n", 2000, 1024, 0, 0, 0, 0)]
    running = [
        Running(1, 11, 1, 1, 0, False, 10.0, 1000, 512),  # queue 1's, at its quota
        Running(2, 12, 1, 2, 0, True, 20.0, 1000, 512),
    ]
    waiting = [Waiting(PendingJob(99, 1, Request(1000, 512)), priority=9)]
    shares = _shares(nodes, running)
    assert plan_preemptions(
        waiting=waiting, nodes=copy.deepcopy(nodes), running=running, shares=shares
    )
    shares.queues[1].quota_cpu_millis = 1000
    assert plan_preemptions(waiting=waiting, nodes=nodes, running=running, shares=shares) == []


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(), st.tuples(st.integers(1, 3), st.integers(1, 3)))
def test_reclaim_evicts_higher_priority_only_from_queues_above_their_share(world, weights):
    nodes, running, waiting = world
    shares = _shares(nodes, running, weights)
    replay = copy.deepcopy(shares)  # the shares as each preemption in turn finds them
    plan = plan_preemptions(waiting=waiting, nodes=nodes, running=running, shares=shares)
    priority_of = {w.job.id: w.priority for w in waiting}
    for preemption in plan:
        for victim in preemption.victims:
            assert victim.preemptible
            if victim.priority >= priority_of[preemption.job.id]:
                assert victim.queue_id != preemption.job.queue_id
                assert replay.share(victim.queue_id) > replay.deserved(victim.queue_id)
                assert replay.may_reclaim(preemption.job)
        for victim in preemption.victims:
            replay.evicted(victim)
        replay.started(preemption.job)


@st.composite
def crowded_nodes(draw):
    """A node, a job, and up to 10 executions on the node that the job may evict, of a
    few shapes (so that many sets tie), asking for about what they and the room free hold."""
    shapes = st.tuples(
        st.sampled_from([250, 500, 1000, 2000, 3000]),
        st.sampled_from([128, 256, 512, 1024]),
        st.sampled_from([0, 0, 1]),
    )
    candidates = [
        Running(i + 1, 100 + i, 1, 1, priority, True, float(started), cpu, memory, gpu)
        for i, ((cpu, memory, gpu), priority, started) in enumerate(
            draw(st.lists(st.tuples(shapes, st.integers(0, 3), st.integers(0, 20)), max_size=10))
        )
    ]
    free = (draw(st.sampled_from([0, 250, 1000])), draw(st.sampled_from([0, 128])), 0)
    node = NodeSlot(1, "n", 64000, 65536, 8, *free)
    most = room_after(node, candidates)
    request = Request(
        draw(st.integers(0, most.cpu_millis + 250)),
        draw(st.integers(0, most.memory_mb + 128)),
        draw(st.integers(0, most.gpu + 1)),
    )
    return node, PendingJob(99, 1, request), candidates


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(crowded_nodes())
def test_it_evicts_the_fewest_and_of_those_the_set_whose_last_victim_comes_earliest(case):
    node, job, candidates = case
    ordered = sorted(candidates, key=victim_order)
    # Every set that makes room, as positions in victim order (ascending), by brute force.
    fitting = [
        positions
        for size in range(len(ordered) + 1)
        for positions in itertools.combinations(range(len(ordered)), size)
        if holds(room_after(node, [ordered[p] for p in positions]), job)
    ]
    chosen = victims_on_node(node, job, candidates)
    if not fitting:
        assert chosen is None
        return
    assert chosen is not None
    positions = tuple(ordered.index(victim) for victim in chosen)
    assert positions in fitting  # makes room, and comes in victim order
    assert len(positions) == min(len(f) for f in fitting)
    # Of the sets that size: compared from the last victim in victim order down, the
    # earliest.
    rivals = [f for f in fitting if len(f) == len(positions)]
    assert positions[::-1] == min(f[::-1] for f in rivals)
