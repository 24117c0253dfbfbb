"""The Redis broker transport, made to survive a Redis restart.

When a worker loses its Redis connection, kombu closes the channel and tries to put the
messages it holds back on their queues through the connection that has just gone, and
an acknowledgement queued by a pool thread before the loss runs later on that closed
channel. With Celery 5.7 both raise AttributeError, which stops the worker. The
platform needs neither: PostgreSQL records what ran, and reconciliation re-publishes any
reserved execution that no agent claimed within the dispatch timeout. So a closed
channel restores nothing, and an acknowledgement that arrives after the close only
forgets the message (Redis either lost it or, after its visibility timeout, re-delivers
it, and a message for a claimed token is dropped).
"""

from kombu.transport import redis


class QoS(redis.QoS):
    restore_at_shutdown = False

    def ack(self, delivery_tag):
        if self.channel.closed:
            self._delivered.pop(delivery_tag, None)
            return
        super().ack(delivery_tag)

    def reject(self, delivery_tag, requeue=False):
        if self.channel.closed:
            self._delivered.pop(delivery_tag, None)
            return
        super().reject(delivery_tag, requeue=requeue)


class Channel(redis.Channel):
    QoS = QoS


class Transport(redis.Transport):
    Channel = Channel
