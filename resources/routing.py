"""The Celery router: an execution's message goes to the queue of the node holding it.

Messages carry only the execution token; the node comes from the live allocation in
PostgreSQL, the one source of truth. Every other task goes to `control`.
"""

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType

from nodes.models import node_queue_name

from .selectors import allocation_node_name

logger = logging.getLogger(__name__)

CONTROL_QUEUE = "control"
# The task that runs an execution on its node; its one argument is the token.
EXECUTION_TASK = "jobs.run_execution"

# Nodes of allocations committed by the code that is now sending their messages.
_known_nodes: ContextVar[Mapping[str, str]] = ContextVar(
    "known_nodes", default=MappingProxyType({})
)


@contextmanager
def routes_known(node_by_token: Mapping[str, str]) -> Iterator[None]:
    """While the block runs, route these tokens to the given nodes without a query each.

    For the scheduling cycle: it has just committed these allocations, so their nodes are
    what the database would answer. Any other token is still looked up.
    """
    reset = _known_nodes.set(node_by_token)
    try:
        yield
    finally:
        _known_nodes.reset(reset)


def route_task(name, args, kwargs, options, task=None, **kw):
    if name != EXECUTION_TASK:
        return {"queue": CONTROL_QUEUE}
    token = (kwargs or {}).get("token")
    node_name = _known_nodes.get().get(token) if token else None
    if node_name is None and token:
        node_name = allocation_node_name(token=token)
    if node_name is None:
        # No live allocation: whoever receives it will drop it, as a stale token.
        logger.warning("no live allocation for execution token=%s; routing to control", token)
        return {"queue": CONTROL_QUEUE}
    return {"queue": node_queue_name(node_name)}
