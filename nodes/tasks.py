"""Celery tasks for nodes, run by beat on the control worker."""

from celery import shared_task
from django.conf import settings

from jobs.services import executions_fail_over_node
from nodes.selectors import node_ids_offline_with_live_executions
from nodes.services import nodes_mark_lost


@shared_task(name="nodes.detect_lost_nodes", ignore_result=True)
def detect_lost_nodes() -> int:
    nodes_mark_lost(older_than_seconds=settings.NODE_LOST_AFTER_SECONDS)
    # Every offline node, not only those just lost: a failed-over run that died half-way
    # is finished by the next one.
    return sum(
        executions_fail_over_node(node_id=node_id, reason="node lost")
        for node_id in node_ids_offline_with_live_executions()
    )
