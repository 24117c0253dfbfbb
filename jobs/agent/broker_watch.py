"""Whether this agent reaches its broker, for its heartbeats to say.

A node that reaches the web API but not the broker gets none of the messages for what
is placed on it. Its Celery consumer cannot tell: a connection whose packets are dropped
looks idle, not broken. So a thread of the agent's own makes a round trip to the broker
every heartbeat interval, on a connection of its own (a passive declaration of the
node's queue), and the broker counts as reachable while one succeeded within
NODE_LOST_AFTER_SECONDS, the patience the node's heartbeats get. A round trip on a
dropped link blocks until it gives up (on Redis, BROKER_SOCKET_TIMEOUT_SECONDS), and
the next connects again.
"""

import logging
import threading
import time

from celery import current_app
from django.conf import settings

logger = logging.getLogger(__name__)


class BrokerWatch(threading.Thread):
    def __init__(self, queue: str):
        super().__init__(name="broker-watch", daemon=True)
        self.queue = queue
        self.stopped = threading.Event()
        self.last_answer = time.monotonic()
        self._reported_unreachable = False

    def reachable(self) -> bool:
        """A round trip succeeded within NODE_LOST_AFTER_SECONDS."""
        silent = time.monotonic() - self.last_answer
        reachable = silent < settings.NODE_LOST_AFTER_SECONDS
        if reachable == self._reported_unreachable:
            self._reported_unreachable = not reachable
            if reachable:
                logger.warning("broker reachable again queue=%s", self.queue)
            else:
                logger.warning("broker unreachable for %.1f s queue=%s", silent, self.queue)
        return reachable

    def run(self):
        while not self.stopped.is_set():
            try:
                with current_app.connection_for_read() as conn:
                    conn.ensure_connection(max_retries=1)
                    channel = conn.channel()
                    while not self.stopped.is_set():
                        channel = self._round_trip(conn, channel)
                        self.last_answer = time.monotonic()
                        self.stopped.wait(settings.NODE_HEARTBEAT_SECONDS)
            except Exception as exc:  # any broker or transport error: connect again
                logger.debug("broker round trip failed: %s", type(exc).__name__)
                self.stopped.wait(settings.NODE_HEARTBEAT_SECONDS)

    def _round_trip(self, conn, channel):
        """Ask the broker about the node's queue, on one channel kept for it (a new one
        costs a connection on Redis); the channel to use next. "No such queue" is an
        answer too: an empty queue does not exist on Redis. AMQP closes a channel on it."""
        try:
            channel.queue_declare(queue=self.queue, passive=True)
        except conn.channel_errors:
            if getattr(channel, "closed", False) or not getattr(channel, "is_open", True):
                return conn.channel()
        return channel

    def stop(self):
        self.stopped.set()
