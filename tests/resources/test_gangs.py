"""Properties of gangs in the planner: all of a gang's tasks are placed or none, a gang
that waits leaves the plan as if it were not there, and capacity, quotas, limits and
reservations hold with gangs in the mix."""

import copy
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
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
    could_hold,
    fit_count,
    matches_selector,
    plan_placements,
    reserve_gang,
)

from .test_backfill import NOW, worlds
from .test_placement import clusters, requests


@st.composite
def gang_worlds(draw):
    """test_backfill's worlds, with a third of the jobs gangs of 2 to 5 tasks, some
    queues with memory and GPU quotas, and some jobs under a concurrency limit."""
    nodes, releases, queues, jobs = draw(worlds())
    for queue in queues.values():
        queue.quota_memory_mb = draw(st.one_of(st.none(), st.sampled_from([0, 2048, 8192])))
        queue.quota_gpu = draw(st.one_of(st.none(), st.integers(0, 3)))
    jobs = [
        replace(
            job,
            tasks=draw(st.sampled_from([1, 1, 2, 3, 5])),
            limit_key=draw(st.sampled_from([None, None, "db"])),
        )
        for job in jobs
    ]
    slots = {"db": draw(st.integers(0, 3))}
    return nodes, releases, queues, jobs, slots


def capacity_of(nodes) -> Resources:
    return Resources(
        sum(n.cpu_millis for n in nodes), sum(n.memory_mb for n in nodes), sum(n.gpu for n in nodes)
    )


def plan_of(world, *, without=None):
    nodes, releases, queues, jobs, slots = copy.deepcopy(world)
    jobs = [job for job in jobs if job.id != without]
    return plan_placements(
        jobs=jobs,
        queues=queues,
        nodes=nodes,
        capacity=capacity_of(nodes),
        limit_slots=slots,
        releases=releases,
        now=NOW,
    )


def as_names(plan):
    return [(job.id, node.name) for job, node in plan.placements]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(gang_worlds())
def test_a_gang_is_placed_whole_or_not_at_all(world):
    jobs = {job.id: job for job in world[3]}
    plan = plan_of(world)
    counts: dict[int, int] = {}
    for job, _ in plan.placements:
        counts[job.id] = counts.get(job.id, 0) + 1
    for job_id, count in counts.items():
        assert count == jobs[job_id].tasks
        assert job_id not in plan.waiting
    assert set(counts) | set(plan.waiting) == set(jobs)
    # A gang's tasks come one after another, so the cycle can number them.
    runs = [job.id for job, _ in plan.placements]
    for job_id in counts:
        first = runs.index(job_id)
        assert runs[first : first + counts[job_id]] == [job_id] * counts[job_id]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(gang_worlds())
def test_with_gangs_capacity_quotas_and_limits_hold(world):
    nodes, _, queues, _, slots = world
    plan = plan_of(world)
    held = {n.id: [0, 0, 0] for n in nodes}
    free = {n.id: (n.free_cpu_millis, n.free_memory_mb, n.free_gpu) for n in nodes}
    per_queue = {qid: [0, 0, 0] for qid in queues}
    limited = set()
    for job, node in plan.placements:
        assert matches_selector(node, job.request.node_selector)
        for totals in (held[node.id], per_queue[job.queue_id]):
            totals[0] += job.request.cpu_millis
            totals[1] += job.request.memory_mb
            totals[2] += job.request.gpu
        if job.limit_key == "db":
            limited.add(job.id)
    for node_id, taken in held.items():
        assert all(t <= f for t, f in zip(taken, free[node_id], strict=True))
    for qid, used in per_queue.items():
        queue = queues[qid]
        for amount, quota in zip(
            used, (queue.quota_cpu_millis, queue.quota_memory_mb, queue.quota_gpu), strict=True
        ):
            assert quota is None or amount <= quota
    assert len(limited) <= slots["db"]  # a gang holds one slot, whatever its tasks


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(gang_worlds(), st.data())
def test_a_gang_that_waits_leaves_the_plan_as_if_it_were_not_there(world, data):
    plan = plan_of(world)
    # Any but the gang that holds the reservation, which changes what the others may do.
    waiting = sorted(
        job.id
        for job in world[3]
        if job.tasks > 1 and plan.waiting.get(job.id) not in (None, Unplaced.RESERVATION)
    )
    if not waiting:
        return
    gang = data.draw(st.sampled_from(waiting))
    alone = plan_of(world, without=gang)
    assert as_names(alone) == as_names(plan)
    assert {k: v for k, v in plan.waiting.items() if k != gang} == alone.waiting


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(gang_worlds())
def test_with_gangs_backfill_never_delays_the_reserved_job_gang_or_not(world):
    nodes, releases, _, _, _ = world
    plan = plan_of(world)
    reservation = plan.reservation
    if reservation is None:
        return
    job = reservation.job
    assert sum(reservation.tasks_on.values()) == job.tasks
    assert set(reservation.tasks_on) == {node.id for node in reservation.nodes}
    # On each reserved node, at the reserved start: the room free before the plan, plus
    # what running executions have given back by then, less what the plan started there
    # that still holds room then (one without a limit holds it for ever), holds the
    # reserved tasks.
    before = {node.id: node for node in nodes}
    for node_id, tasks in reservation.tasks_on.items():
        assert node_id in releases  # only where every running execution has a limit
        node = before[node_id]
        free = [node.free_cpu_millis, node.free_memory_mb, node.free_gpu]
        for release in releases[node_id]:
            if release.at <= reservation.starts_at:
                free = [
                    free[0] + release.cpu_millis,
                    free[1] + release.memory_mb,
                    free[2] + release.gpu,
                ]
        for started, chosen in plan.placements:
            limit = started.time_limit
            if chosen.id == node_id and (limit is None or NOW + limit > reservation.starts_at):
                r = started.request
                free = [free[0] - r.cpu_millis, free[1] - r.memory_mb, free[2] - r.gpu]
        r = job.request
        assert free[0] >= tasks * r.cpu_millis
        assert free[1] >= tasks * r.memory_mb
        assert free[2] >= tasks * r.gpu


def room_at(node: NodeSlot, releases, moment: float) -> list[int]:
    """The node's free room at `moment`, by the time limits of what runs on it."""
    free = [node.free_cpu_millis, node.free_memory_mb, node.free_gpu]
    for release in releases:
        if release.at <= moment:
            free = [
                free[0] + release.cpu_millis,
                free[1] + release.memory_mb,
                free[2] + release.gpu,
            ]
    return free


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(gang_worlds(), requests, st.integers(2, 6), st.sampled_from(list(Strategy)))
def test_a_gangs_reservation_is_the_first_time_all_its_tasks_fit_and_holds_them(
    world, request, tasks, strategy
):
    nodes, releases, _, _, _ = world
    gang = PendingJob(99, 0, request, tasks=tasks)
    reservation = reserve_gang(gang, copy.deepcopy(nodes), releases, NOW, strategy)
    usable = [n for n in nodes if n.id in releases and could_hold(n, request)]

    def tasks_that_fit_at(moment: float) -> int:
        return sum(fit_count(room_at(n, releases[n.id], moment), request, tasks) for n in usable)

    moments = sorted({NOW, *(max(r.at, NOW) for n in usable for r in releases[n.id])})
    if reservation is None:
        assert tasks_that_fit_at(moments[-1]) < tasks
        return
    assert all(tasks_that_fit_at(m) < tasks for m in moments if m < reservation.starts_at)
    assert reservation.starts_at in moments
    assert sum(reservation.tasks_on.values()) == tasks
    by_id = {n.id: n for n in usable}
    for node_id, count in reservation.tasks_on.items():
        free = room_at(by_id[node_id], releases[node_id], reservation.starts_at)
        wanted = (request.cpu_millis, request.memory_mb, request.gpu)
        spare = reservation.spare[node_id]
        assert [f - count * w for f, w in zip(free, wanted, strict=True)] == [
            spare.cpu_millis,
            spare.memory_mb,
            spare.gpu,
        ]
        assert min(spare.cpu_millis, spare.memory_mb, spare.gpu) >= 0


@settings(max_examples=300)
@given(clusters, requests, st.integers(1, 6), st.sampled_from(list(Strategy)))
def test_choose_gang_is_choose_node_task_after_task(nodes, request, tasks, strategy):
    index = NodeIndex(copy.deepcopy(nodes), request)
    by_id = {n.id: n for n in index_nodes(index)}
    before = {n.id: (n.free_cpu_millis, n.free_memory_mb, n.free_gpu) for n in by_id.values()}
    chosen = index.choose_gang(request, tasks, strategy)
    plain, expected = copy.deepcopy(nodes), []
    for _ in range(tasks):
        choice = choose_node(plain, request, strategy)
        if not isinstance(choice, NodeSlot):
            break
        choice.take(request)
        expected.append(choice.name)
    if len(expected) == tasks:
        assert [n.name for n in chosen] == expected
    else:
        assert chosen in (Unplaced.GANG_DOES_NOT_FIT, Unplaced.NODE_SELECTOR)
        assert chosen is Unplaced.GANG_DOES_NOT_FIT or not expected
        # Nothing taken, and the index answers single requests as before.
        after = {n.id: (n.free_cpu_millis, n.free_memory_mb, n.free_gpu) for n in by_id.values()}
        assert after == before
        single = index.choose(request, strategy)
        plain_single = choose_node(copy.deepcopy(nodes), request, strategy)
        assert getattr(single, "name", single) == getattr(plain_single, "name", plain_single)


def index_nodes(index: NodeIndex) -> list[NodeSlot]:
    return [node for shape in index.shapes.values() for _, _, node in shape.emptiest_last]


def test_a_gang_too_large_for_the_free_room_waits_with_its_own_reason():
    nodes = [NodeSlot(i, f"n{i}", 1000, 1024, 0, 1000, 1024, 0, {}) for i in range(2)]
    queues = {1: QueueState(id=1, name="q")}
    gang = PendingJob(7, 1, Request(1000, 256), tasks=3)
    single = PendingJob(8, 1, Request(1000, 256))
    plan = plan_placements(
        jobs=[gang, single], queues=queues, nodes=nodes, capacity=capacity_of(nodes)
    )
    assert plan.waiting == {7: Unplaced.GANG_DOES_NOT_FIT}
    assert [(job.id, node.name) for job, node in plan.placements] == [(8, "n0")]
