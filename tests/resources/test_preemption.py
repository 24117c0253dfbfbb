"""Properties of the preemption planner: it evicts only preemptible executions of lower
priority (or, reclaiming, of queues above their deserved share), a set no victim of which
could be spared, and after the evictions the job fits, with no room given twice."""

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    victims_on_node,
)

CPU = st.sampled_from([500, 1000, 2000])
MEMORY = st.sampled_from([128, 256, 512])


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
                Running(
                    id=len(running) + 1,
                    job_id=1000 + len(running),
                    node_id=index + 1,
                    queue_id=draw(st.integers(1, 2)),
                    priority=draw(st.integers(0, 3)),
                    preemptible=draw(st.booleans()),
                    started_at=float(draw(st.integers(0, 100))),
                    cpu_millis=want_cpu,
                    memory_mb=want_memory,
                )
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
    for preemption in plan:
        job, node = preemption.job, current[preemption.node.id]
        assert preemption.victims, "a preemption without victims"
        assert matches_selector(node, job.request.node_selector)
        for victim in preemption.victims:
            assert victim is by_id[victim.id]
            assert victim.preemptible
            assert victim.priority < priority_of[job.id]
            assert victim.node_id == node.id
        # Minimal: no victim could be spared.
        for spared in preemption.victims:
            rest = [v for v in preemption.victims if v is not spared]
            assert not holds(room_after(node, rest), job)
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
    # Lowest priority first takes the small one, which is not enough; the large one is,
    # alone: the small one is spared.
    assert victims_on_node(node, job, [small, large]) == (large,)


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
