"""Sending executions' messages to their nodes' queues, never before their rows commit.

A message is an idempotent nudge carrying an execution token: the node claims the token
in PostgreSQL before it runs anything, and reconciliation sends again what no node
claimed in time. A message sent before the transaction that reserved its execution
commits could be claimed before the row exists (and be dropped as stale), or announce a
placement that is then rolled back; so a send asked for inside a transaction waits for
its commit, and one whose transaction rolls back is never sent.
"""

import logging
from collections.abc import Iterable, Sequence
from functools import partial

from celery import current_app
from celery.utils import uuid
from celery.utils.nodenames import anon_nodename
from django.db import transaction

from nodes.models import node_stops_queue_name
from resources.routing import EXECUTION_TASK

logger = logging.getLogger(__name__)


def executions_publish_on_commit(*, tokens: Sequence[str]) -> None:
    """Send the executions' messages now if no transaction is open, else once it commits."""
    if not tokens:
        return
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(partial(_publish, list(tokens)))
    else:
        _publish(tokens)


def _publish(tokens: Sequence[str]) -> None:
    """Send many executions' messages over one producer connection, pipelined.

    The same messages `send_task` would send, routed by the same router, built and sent
    with the two calls `send_task` itself makes: its per-call option handling costs as
    much as the publishing when a cycle sends thousands. A failure here loses nothing:
    whatever was not sent stays `reserved` in PostgreSQL, and reconciliation sends it again.

    With Redis the queue is not declared: a node's queue is declared by its own worker,
    and a message for it is addressed to it by name. RabbitMQ drops a message routed to
    a queue nobody declared (a node whose worker has not started yet, or a vhost that was
    reset), so there the node's durable queue is declared before the first message to it,
    once per connection (kombu remembers what a connection declared).
    """
    app = current_app
    amqp = app.amqp
    send_sent_event = app.conf.task_send_sent_event
    origin = anon_nodename()
    try:
        with app.producer_or_acquire() as producer, producer.batch():
            # None: send_task_message declares the message's queue (if not yet declared).
            declare = None if producer.connection.transport.driver_type == "amqp" else []
            for token in tokens:
                kwargs = {"token": token}
                route = amqp.router.route({}, EXECUTION_TASK, (), kwargs)
                # The arguments' reprs are what Celery's saferepr would make of them,
                # without its cost (a third of the message's) for a dict of one string.
                message = amqp.create_task_message(
                    uuid(),
                    EXECUTION_TASK,
                    (),
                    kwargs,
                    create_sent_event=send_sent_event,
                    argsrepr="()",
                    kwargsrepr=repr(kwargs),
                    origin=origin,
                    ignore_result=None,  # as send_task leaves it
                )
                amqp.send_task_message(producer, EXECUTION_TASK, message, declare=declare, **route)
    except Exception:
        logger.exception("could not publish %s executions", len(tokens))


def stop_checks_publish_on_commit(*, node_names: Iterable[str]) -> None:
    """Tell these nodes' agents to ask now which of their executions to stop (a cancel, a
    preemption, a gang's task stopping, an attempt failed over), once the transaction
    that asked for it commits, rather than at their next check.

    A nudge, as an execution's message is: the agent reads what to stop from the API.
    A lost one costs only time (the agent checks every `NODE_CANCEL_POLL_SECONDS` anyway,
    and at once when its calls get through again after an outage). Sent on the default
    exchange to `node.NAME.stops`, which the agent declares: with RabbitMQ a nudge for a
    node whose agent never declared it is dropped, and its agent checks when it starts.
    """
    names = sorted(set(node_names))
    if not names:
        return
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(partial(_publish_stop_checks, names))
    else:
        _publish_stop_checks(names)


def _publish_stop_checks(node_names: Sequence[str]) -> None:
    try:
        with current_app.producer_or_acquire() as producer, producer.batch():
            for name in node_names:
                producer.publish(
                    {"stops": name},
                    exchange="",
                    routing_key=node_stops_queue_name(name),
                    serializer="json",
                    retry=False,
                )
    except Exception:
        logger.exception("could not ask %s node(s) to check their stops", len(node_names))
