"""The Celery router: an execution's message goes to the queue of the node holding it.

Messages carry only the execution token; the node comes from the live allocation in
PostgreSQL, the one source of truth. Every other task goes to `control`.
"""

import logging

from jobs.services import EXECUTION_TASK
from nodes.models import node_queue_name

from .selectors import allocation_node_name

logger = logging.getLogger(__name__)

CONTROL_QUEUE = "control"


def route_task(name, args, kwargs, options, task=None, **kw):
    if name != EXECUTION_TASK:
        return {"queue": CONTROL_QUEUE}
    token = (kwargs or {}).get("token")
    node_name = allocation_node_name(token=token) if token else None
    if node_name is None:
        # No live allocation: whoever receives it will drop it, as a stale token.
        logger.warning("no live allocation for execution token=%s; routing to control", token)
        return {"queue": CONTROL_QUEUE}
    return {"queue": node_queue_name(node_name)}
