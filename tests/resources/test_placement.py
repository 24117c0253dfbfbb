"""Properties of the placement functions, over generated clusters and requests."""

from hypothesis import given
from hypothesis import strategies as st

from resources.placement import (
    NodeSlot,
    Request,
    Strategy,
    Unplaced,
    choose_node,
    fits_now,
    free_fraction_after,
    matches_selector,
)

ZONES = ["a", "b", "c"]


@st.composite
def node_slots(draw, index=0):
    cpu = draw(st.integers(1, 64)) * 1000
    memory = draw(st.integers(1, 256)) * 1024
    gpu = draw(st.integers(0, 4))
    return NodeSlot(
        id=index,
        name=f"n{index:03d}",
        cpu_millis=cpu,
        memory_mb=memory,
        gpu=gpu,
        free_cpu_millis=draw(st.integers(0, cpu)),
        free_memory_mb=draw(st.integers(0, memory)),
        free_gpu=draw(st.integers(0, gpu)),
        labels={"zone": draw(st.sampled_from(ZONES))},
    )


clusters = st.integers(0, 12).flatmap(
    lambda n: st.tuples(*[node_slots(index=i) for i in range(n)]).map(list)
)
requests = st.builds(
    Request,
    cpu_millis=st.integers(1, 16_000),
    memory_mb=st.integers(0, 64 * 1024),
    gpu=st.integers(0, 2),
    node_selector=st.one_of(st.just({}), st.sampled_from(ZONES).map(lambda z: {"zone": z})),
)


@given(clusters, requests, st.sampled_from(list(Strategy)))
def test_it_never_places_where_the_request_does_not_fit(nodes, request, strategy):
    choice = choose_node(nodes, request, strategy)
    if isinstance(choice, NodeSlot):
        assert fits_now(choice, request)
        assert matches_selector(choice, request.node_selector)
    else:
        assert not any(
            fits_now(n, request) and matches_selector(n, request.node_selector) for n in nodes
        )


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
    candidates = [
        n for n in nodes if fits_now(n, request) and matches_selector(n, request.node_selector)
    ]
    packed = choose_node(nodes, request, Strategy.BINPACK)
    spread = choose_node(nodes, request, Strategy.SPREAD)
    if not candidates:
        return
    left = [free_fraction_after(n, request) for n in candidates]
    assert free_fraction_after(packed, request) == min(left)
    assert free_fraction_after(spread, request) == max(left)


@given(clusters, requests)
def test_the_choice_does_not_depend_on_the_order_of_nodes(nodes, request):
    forward = choose_node(nodes, request)
    backward = choose_node(list(reversed(nodes)), request)
    assert getattr(forward, "name", forward) == getattr(backward, "name", backward)


def test_a_gpu_request_only_lands_on_a_node_with_a_free_gpu():
    cpu_only = NodeSlot(1, "cpu", 8000, 8192, 0, 8000, 8192, 0)
    gpu_busy = NodeSlot(2, "gpu-busy", 8000, 8192, 1, 8000, 8192, 0)
    gpu_free = NodeSlot(3, "gpu-free", 8000, 8192, 1, 1000, 1024, 1)
    assert choose_node([cpu_only, gpu_busy, gpu_free], Request(500, 100, gpu=1)) is gpu_free
