"""Placement: pure functions over an in-memory snapshot of nodes.

Predicates say whether a node may take a request; scorers rank the nodes that may.
Nothing here touches the database, so the scheduling cycle can place thousands of jobs
between one read and one write, and the rules can be property-tested on their own.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True)
class Request:
    cpu_millis: int
    memory_mb: int
    gpu: int = 0
    node_selector: Mapping[str, str] = field(default_factory=dict)


@dataclass
class NodeSlot:
    """A node as placement sees it: capacity, what is free now, and its labels."""

    id: int
    name: str
    cpu_millis: int
    memory_mb: int
    gpu: int
    free_cpu_millis: int
    free_memory_mb: int
    free_gpu: int
    labels: Mapping[str, str] = field(default_factory=dict)

    def take(self, request: Request) -> None:
        self.free_cpu_millis -= request.cpu_millis
        self.free_memory_mb -= request.memory_mb
        self.free_gpu -= request.gpu


class Strategy(StrEnum):
    BINPACK = "binpack"  # the fullest node that fits: keeps large holes for large jobs
    SPREAD = "spread"  # the emptiest node that fits: spreads load and blast radius


class Unplaced(StrEnum):
    """Why a request found no node; the values are job pending reasons."""

    NODE_SELECTOR = "node_selector"
    INSUFFICIENT_CAPACITY = "insufficient_capacity"


def matches_selector(node: NodeSlot, selector: Mapping[str, str]) -> bool:
    return all(node.labels.get(key) == value for key, value in selector.items())


def fits_now(node: NodeSlot, request: Request) -> bool:
    return (
        request.cpu_millis <= node.free_cpu_millis
        and request.memory_mb <= node.free_memory_mb
        and request.gpu <= node.free_gpu
    )


def fits_capacity(node: NodeSlot, request: Request) -> bool:
    """Could the node hold the request if it were empty?"""
    return (
        request.cpu_millis <= node.cpu_millis
        and request.memory_mb <= node.memory_mb
        and request.gpu <= node.gpu
    )


def free_fraction_after(node: NodeSlot, request: Request) -> float:
    """Mean share of the node left free once the request is placed (0 = full)."""
    shares = [
        (node.free_cpu_millis - request.cpu_millis) / node.cpu_millis,
        (node.free_memory_mb - request.memory_mb) / node.memory_mb if node.memory_mb else 0.0,
    ]
    if node.gpu:
        shares.append((node.free_gpu - request.gpu) / node.gpu)
    return sum(shares) / len(shares)


def choose_node(
    nodes: Iterable[NodeSlot], request: Request, strategy: Strategy = Strategy.BINPACK
) -> NodeSlot | Unplaced:
    """The best node for the request, or why there is none. Ties go to the lower name."""
    best: NodeSlot | None = None
    best_key: tuple[float, str] | None = None
    selector_matched = False
    for node in nodes:
        if not matches_selector(node, request.node_selector):
            continue
        selector_matched = True
        if not fits_now(node, request):
            continue
        left = free_fraction_after(node, request)
        key = (left if strategy is Strategy.BINPACK else -left, node.name)
        if best_key is None or key < best_key:
            best, best_key = node, key
    if best is not None:
        return best
    if request.node_selector and not selector_matched:
        return Unplaced.NODE_SELECTOR
    return Unplaced.INSUFFICIENT_CAPACITY
