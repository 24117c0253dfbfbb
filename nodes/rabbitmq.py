"""Each node's own RabbitMQ user: what it may touch on the broker, and the rabbitmqctl
commands that create it.

With RabbitMQ (`CELERY_BROKER_URL=amqp://...`) a node agent connects as `node.<name>`,
whose permissions (regular expressions over queue and exchange names, in the broker's
vhost) allow only:

- its own queue `node.<name>` and the direct exchange of the same name Celery binds it
  to: declare, bind, consume. Not another node's queue, not `control`, not the default
  exchange (so it cannot publish to any queue by name);
- its stops queue `node.<name>.stops` (on the default exchange, which the control plane
  publishes to): declare and consume;
- `celeryev`, the events exchange: declare and publish its task events and heartbeats
  (Flower reads them), not read them;
- remote control: bind and consume its own `<name>@<host>.celery.pidbox` queue on the
  `celery.pidbox` fanout exchange, and answer on `reply.celery.pidbox`.

The control plane's processes (web, scheduler, beat, control worker, Flower) connect as a
user with every permission on the vhost. Node names are DNS labels (no dot, no `@`), so
no node's patterns match another node's names.
"""

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from .models import node_queue_name, node_stops_queue_name

EVENTS_EXCHANGE = "celeryev"
PIDBOX_EXCHANGE = "celery.pidbox"
PIDBOX_REPLY_EXCHANGE = "reply.celery.pidbox"


@dataclass(frozen=True)
class NodePermissions:
    """A `rabbitmqctl set_permissions` line: configure, write and read patterns."""

    user: str
    configure: str
    write: str
    read: str


def node_broker_user(node_name: str) -> str:
    return node_queue_name(node_name)


def _anchored(*patterns: str) -> str:
    return "^(" + "|".join(patterns) + ")$"


def node_broker_permissions(node_name: str) -> NodePermissions:
    queue = re.escape(node_queue_name(node_name))
    stops = re.escape(node_stops_queue_name(node_name))
    pidbox_queue = re.escape(f"{node_name}@") + r"[^@]*" + re.escape(f".{PIDBOX_EXCHANGE}")
    events, pidbox, reply = (
        re.escape(name) for name in (EVENTS_EXCHANGE, PIDBOX_EXCHANGE, PIDBOX_REPLY_EXCHANGE)
    )
    return NodePermissions(
        user=node_broker_user(node_name),
        # Declaring: its queue and exchange, its stops queue, its pidbox queue, and the
        # shared exchanges (a redeclaration with the same arguments changes nothing).
        configure=_anchored(queue, stops, pidbox_queue, events, pidbox, reply),
        # Publishing to an exchange, and binding a queue (write on the queue): its own
        # queue and pidbox queue, its events, its control replies.
        write=_anchored(queue, pidbox_queue, events, reply),
        # Consuming a queue, and binding to an exchange (read on the exchange).
        read=_anchored(queue, stops, pidbox_queue, pidbox),
    )


def broker_vhost(broker_url: str) -> str:
    """The vhost of an amqp:// URL ("/" when the path is empty, as kombu takes it)."""
    path = urlsplit(broker_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def node_broker_url(broker_url: str, *, node_name: str, password: str) -> str:
    """The control plane's broker URL, with the node's user and password in it."""
    parts = urlsplit(broker_url)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(node_broker_user(node_name), safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=netloc).geturl()


def rabbitmqctl_add_user(user: str) -> list[str]:
    """The password is read from standard input, so it shows in no process list."""
    return ["rabbitmqctl", "add_user", user]


def rabbitmqctl_change_password(user: str) -> list[str]:
    return ["rabbitmqctl", "change_password", user]


def rabbitmqctl_set_permissions(vhost: str, permissions: NodePermissions) -> list[str]:
    return [
        "rabbitmqctl",
        "set_permissions",
        "-p",
        vhost,
        permissions.user,
        permissions.configure,
        permissions.write,
        permissions.read,
    ]
