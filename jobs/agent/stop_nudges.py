"""The nudges that tell the agent to ask which of its executions to stop.

The control plane sends one to the node's stops queue (`node.NAME.stops`) when it asks
the node to stop an execution: a cancel, a preemption, a gang's task stopping, an
attempt failed over (`jobs.services.publishing.stop_checks_publish_on_commit`). A thread
of the agent's own consumes that queue on a connection of its own: the Celery worker
could not carry them, since its pool may be busy with the very executions to stop, and
the broker watch's round trips measure the link, so they stay apart from it. A nudge
sets `asked`, and the agent's loop then asks the API what to stop. Each (re)connection
counts as a nudge too, for those that may have been missed while the line was down.
"""

import logging
import threading

from celery import current_app
from kombu import Consumer, Queue

logger = logging.getLogger(__name__)

# How long one drain waits before looking at the stop flag; and the pause before
# connecting again after the broker failed.
DRAIN_SECONDS = 1.0
RECONNECT_SECONDS = 1.0


class StopNudges(threading.Thread):
    def __init__(self, queue: str):
        super().__init__(name="stop-nudges", daemon=True)
        self.queue = queue
        self.asked = threading.Event()  # set by a nudge, cleared by the agent's loop
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            try:
                with (
                    current_app.connection_for_read() as conn,
                    Consumer(
                        conn,
                        queues=[Queue(self.queue)],
                        callbacks=[self._nudged],
                        accept=["json"],
                    ),
                ):
                    self.asked.set()
                    while not self.stopped.is_set():
                        try:
                            conn.drain_events(timeout=DRAIN_SECONDS)
                        except TimeoutError:
                            continue
            except Exception as exc:  # any broker or transport error: connect again
                logger.debug("stops queue lost: %s", type(exc).__name__)
                self.stopped.wait(RECONNECT_SECONDS)

    def _nudged(self, body, message):
        message.ack()
        self.asked.set()

    def stop(self):
        self.stopped.set()
