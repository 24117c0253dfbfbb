"""Writes for nodes: registration, heartbeats, loss, cordon, drain and uncordon, and
the credentials node agents authenticate with."""

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery import current_app
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Case, Count, Q, Value, When
from django.utils import timezone
from psycopg.types.json import Jsonb

from accounts.services import secret_key_digest, secret_key_generate, secret_key_matches
from common.db import prepared_cursor
from common.wakeup import scheduler_wake
from events.models import Event, EventType
from events.services import event_record, events_record

from .models import Node, NodeCredential, NodeLoss, NodeStatus

logger = logging.getLogger(__name__)


@transaction.atomic
def node_register(
    *,
    name: str,
    cpu_millis: int,
    memory_mb: int,
    gpu: int = 0,
    labels: dict | None = None,
    address: str = "",
    agent_version: str = "",
) -> Node:
    """Create the node or update its capacity and labels; an offline node comes back as
    it was before it was lost (`node_status_after_loss`).

    A cordoned or draining node stays so: that was an operator's decision.
    """
    node = Node.objects.select_for_update().filter(name=name).first()
    back = node is not None and node.status == NodeStatus.OFFLINE
    if node is None:
        node = Node(name=name)
    elif (
        cpu_millis < node.allocated_cpu_millis
        or memory_mb < node.allocated_memory_mb
        or gpu < node.allocated_gpu
    ):
        raise ValidationError(
            f"Node {name} has more allocated ({node.allocated_cpu_millis} CPU millis, "
            f"{node.allocated_memory_mb} MB, {node.allocated_gpu} GPU) than the new capacity; "
            "drain it first."
        )
    if back:
        node.status = node_status_after_loss(name=name)
    node.cpu_millis, node.memory_mb, node.gpu = cpu_millis, memory_mb, gpu
    node.labels = labels or {}
    node.address = address
    node.agent_version = agent_version
    node.last_heartbeat = timezone.now()
    node.heartbeat_gap_seconds = None
    # A new agent runs nothing yet; whatever the old one ran is found and failed over.
    node.running_tokens = []
    node.used_cpu_millis = node.used_memory_mb = None
    node.save()
    event_record(
        type=EventType.NODE_BACK if back else EventType.NODE_REGISTERED,
        message=f"{'back' if back else 'registered'}: {name} with {cpu_millis / 1000:g} CPU, "
        f"{memory_mb} MB, {gpu} GPU; {node.status}",
        node_id=node.pk,
        data={"node": name, "status": node.status, "labels": node.labels},
    )
    scheduler_wake()
    logger.info(
        "node registered node=%s cpu_millis=%s memory_mb=%s gpu=%s labels=%s",
        name,
        cpu_millis,
        memory_mb,
        gpu,
        node.labels,
    )
    return node


@dataclass(frozen=True)
class NodeUsage:
    """What a node's jobs really use, as its agent sampled them."""

    cpu_millis: int  # CPU time per second, in thousandths of a core
    memory_mb: int  # resident


def node_heartbeat(
    *,
    name: str,
    at: datetime,
    running_tokens: list[str],
    used: NodeUsage | None = None,
    broker_reachable: bool = True,
) -> Node | None:
    """Record that the agent was alive at `at`, running exactly `running_tokens`, whose
    jobs used `used` (None: the agent did not say, and an older figure is not kept).
    Returns the node as it is now (without its `running_tokens`), None when no such node
    is registered.

    An offline node whose agent heartbeats again (its link is back) comes back as it was
    before it was lost (`node_back`); its failed-over executions stay failed over.

    An agent that reaches the API but not the broker gets no message, so it cannot run
    what is placed on it: its heartbeat is not counted (`node_broker_unreachable`)."""
    fields = {
        "running_tokens": running_tokens,
        "used_cpu_millis": None if used is None else used.cpu_millis,
        "used_memory_mb": None if used is None else used.memory_mb,
    }
    # When the control plane cannot reach the broker either, the outage is the broker's,
    # not the node's link: the node stays up, and its running work reports through the API.
    if not broker_reachable and broker_reachable_here():
        recorded = node_broker_unreachable(name=name, at=at, fields=fields)
    else:
        fields["last_heartbeat"] = at
        node = node_heartbeat_if_up(name=name, fields=fields)
        if node is not None:
            return node
        recorded = node_back(name=name, fields=fields)
    return Node.objects.defer("running_tokens").get(name=name) if recorded else None


# A heartbeat of a node that is up. It returns every column but the running tokens, in
# the model's order, as Model.from_db takes them, for the answer (NodeSerializer).
HEARTBEAT_ANSWER_FIELDS = [
    field.attname for field in Node._meta.concrete_fields if field.name != "running_tokens"
]
HEARTBEAT_SQL = f"""
UPDATE nodes_node
   SET running_tokens = %(running_tokens)s, used_cpu_millis = %(used_cpu_millis)s,
       used_memory_mb = %(used_memory_mb)s, last_heartbeat = %(last_heartbeat)s,
       heartbeat_gap_seconds = EXTRACT(EPOCH FROM %(last_heartbeat)s - last_heartbeat)
 WHERE name = %(name)s AND status <> %(offline)s
RETURNING {", ".join(HEARTBEAT_ANSWER_FIELDS)}
"""  # noqa: S608 (the model's column names)


def node_heartbeat_if_up(*, name: str, fields: dict) -> Node | None:
    """A heartbeat of a node that is up, as nearly every heartbeat is: one prepared
    statement records it and returns the node for the answer (the ORM's update and a
    read after it cost the web server more than the rest of the request). None when the
    node is offline or not registered."""
    params = {
        **fields,
        "running_tokens": Jsonb(fields["running_tokens"]),
        "name": name,
        "offline": NodeStatus.OFFLINE.value,
    }
    with prepared_cursor() as cursor:
        cursor.execute(HEARTBEAT_SQL, params)
        row = cursor.fetchone()
    if row is None:
        return None
    values = list(row)
    labels = HEARTBEAT_ANSWER_FIELDS.index("labels")
    values[labels] = json.loads(values[labels])  # jsonb arrives as text, as in the ORM
    return Node.from_db(connection.alias, HEARTBEAT_ANSWER_FIELDS, values)


_broker_checked: tuple[float, bool] = (-float("inf"), True)  # (monotonic time, reachable)


def broker_reachable_here() -> bool:
    """Whether this process reaches the broker (a connection within 2 s), checked at most
    once per heartbeat interval: asked only when an agent says it cannot reach it."""
    global _broker_checked
    checked_at, reachable = _broker_checked
    if time.monotonic() - checked_at < settings.NODE_HEARTBEAT_SECONDS:
        return reachable
    try:
        with current_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        reachable = True
    except Exception:  # whatever the transport raises: not reachable
        reachable = False
    _broker_checked = (time.monotonic(), reachable)
    return reachable


@transaction.atomic
def node_broker_unreachable(*, name: str, at: datetime, fields: dict) -> bool:
    """The agent of a node says it cannot reach the broker. Its heartbeat is recorded
    (what it runs, what that uses) but not as a sign of life, so the node goes offline
    NODE_LOST_AFTER_SECONDS after its last full heartbeat and what it ran is failed over,
    as for a silent node; an offline one stays offline. One event per outage: the first
    such heartbeat after the last full one. False when no such node is registered."""
    node = Node.objects.select_for_update().filter(name=name).first()
    if node is None:
        return False
    Node.objects.filter(pk=node.pk).update(**fields)
    told = Event.objects.filter(type=EventType.NODE_BROKER_UNREACHABLE, node_id=node.pk)
    if node.last_heartbeat is not None:
        told = told.filter(at__gte=node.last_heartbeat)
    if not told.exists():
        offline = node.status == NodeStatus.OFFLINE
        outlook = "offline already" if offline else "it goes offline unless it reconnects"
        event_record(
            type=EventType.NODE_BROKER_UNREACHABLE,
            message=f"broker unreachable: {name} reaches the API but not the broker; {outlook}",
            node_id=node.pk,
            data={"node": name, "status": node.status},
            at=at,
        )
        logger.warning("node reaches the API but not the broker node=%s", name)
    return True


def node_status_after_loss(*, name: str) -> NodeStatus:
    """What a node that was lost comes back as: cordoned if it was cordoned or draining
    when it went offline (its executions were failed over, so a drain is over), else
    ready."""
    before = (
        NodeLoss.objects.filter(node_name=name)
        .order_by("-lost_at", "-id")
        .values_list("status_before", flat=True)
        .first()
    )
    if before in (NodeStatus.CORDONED, NodeStatus.DRAINING):
        return NodeStatus.CORDONED
    return NodeStatus.READY


@transaction.atomic
def node_back(*, name: str, fields: dict) -> bool:
    """An offline node heard from again: it takes `fields` (a heartbeat's) and the status
    it had before it was lost. False when no such node is registered."""
    node = Node.objects.select_for_update().filter(name=name).first()
    if node is None:
        return False
    if node.status != NodeStatus.OFFLINE:  # another heartbeat brought it back first
        Node.objects.filter(pk=node.pk).update(**fields)
        return True
    status = node_status_after_loss(name=name)
    # Its gap would span the time it was away, not the pace of its heartbeats.
    Node.objects.filter(pk=node.pk).update(
        status=status, updated_at=timezone.now(), heartbeat_gap_seconds=None, **fields
    )
    event_record(
        type=EventType.NODE_BACK,
        message=f"back: {name} heartbeats again; {status}",
        node_id=node.pk,
        data={"node": name, "status": status},
    )
    if status == NodeStatus.READY:
        scheduler_wake()
    logger.warning("node back node=%s status=%s", name, status)
    return True


def nodes_mark_lost(*, older_than_seconds: float) -> list[str]:
    """Nodes silent for longer than `older_than_seconds` go offline, each loss recorded
    (`NodeLoss`); returns their names.

    That time is stretched while the nodes' heartbeats arrive far apart (see
    `node_loss_stretch`): a web server with a backlog serves every node's heartbeat late,
    and its nodes are not lost for it.

    When most of the nodes are silent (for half that time) or offline (see `loss_held`),
    only the longest silent goes, and only if no node was lost within
    `older_than_seconds`: a control plane that hears from no one (its web server down
    longer than that, its network cut) does not fail every node over at once, while a
    rack that really died still is, slowly."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=older_than_seconds)
    with transaction.atomic():
        silent = list(
            Node.objects.select_for_update(skip_locked=True)
            .exclude(status=NodeStatus.OFFLINE)
            .filter(last_heartbeat__lt=cutoff)
            .order_by("last_heartbeat", "id")
            .values_list("id", "name", "last_heartbeat", "status")
        )
        stretch = node_loss_stretch() if silent else 1.0
        if stretch > 1:
            older_than_seconds *= stretch
            cutoff = now - timedelta(seconds=older_than_seconds)
            spared = [name for _, name, beat, _ in silent if beat >= cutoff]
            silent = [node for node in silent if node[2] < cutoff]
            if spared:
                logger.warning(
                    "node loss stretched %.1f times (heartbeats arrive about %.0f s apart, "
                    "%.0f s expected): a node is lost after %.0f s of silence; %s silent "
                    "nodes spared, the longest silent %s",
                    stretch,
                    stretch * 2 * settings.NODE_HEARTBEAT_SECONDS,
                    settings.NODE_HEARTBEAT_SECONDS,
                    older_than_seconds,
                    len(spared),
                    spared[0],
                )
        if silent:
            # Down: offline, or silent for half the time it takes to be lost. Nodes fall
            # silent a heartbeat apart; counting those about to be lost sees a mass
            # silence from its first loss on, not only once some have gone.
            half = now - timedelta(seconds=older_than_seconds / 2)
            counts = Node.objects.aggregate(
                total=Count("id"),
                down=Count("id", filter=Q(status=NodeStatus.OFFLINE) | Q(last_heartbeat__lt=half)),
            )
            down, total = counts["down"], counts["total"]
            if loss_held(down=down, total=total):
                recent = NodeLoss.objects.filter(lost_at__gt=cutoff).exists()
                logger.warning(
                    "node loss held: %s of %s nodes silent or offline; failing over %s",
                    down,
                    total,
                    "none yet" if recent else f"one, {silent[0][1]}",
                )
                silent = [] if recent else silent[:1]
        names = [name for _, name, _, _ in silent]
        if names:
            Node.objects.filter(name__in=names).update(status=NodeStatus.OFFLINE)
            NodeLoss.objects.bulk_create(
                NodeLoss(node_name=name, lost_at=now, last_heartbeat=beat, status_before=status)
                for _, name, beat, status in silent
            )
            events_record(
                Event(
                    at=now,
                    type=EventType.NODE_OFFLINE,
                    node_id=node_id,
                    message=f"offline: {name} silent since {beat.isoformat() if beat else 'ever'}",
                    data={"node": name, "last_heartbeat": beat.isoformat() if beat else None},
                )
                for node_id, name, beat, _ in silent
            )
    for name in names:
        logger.warning("node lost node=%s silent_for_more_than=%ss", name, older_than_seconds)
    return names


def node_loss_stretch() -> float:
    """How much longer than NODE_LOST_AFTER_SECONDS a node may be silent before it is
    lost: the median, over the nodes that are up, of the gap between their last two
    heartbeats, over twice NODE_HEARTBEAT_SECONDS; 1 when that is smaller, at most
    NODE_LOSS_MAX_STRETCH.

    Heartbeats that a saturated web server queues for long arrive far apart from every
    node at once, so the median rises; a node that died or was cut off keeps the gap it
    had while it was heard, and a minority of them does not move the median, so they are
    lost on time. Agents that beat more slowly than this server's setting stretch it
    too, as they should."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY heartbeat_gap_seconds) "
            "FROM nodes_node WHERE status <> %s AND heartbeat_gap_seconds IS NOT NULL",
            [NodeStatus.OFFLINE.value],
        )
        (gap,) = cursor.fetchone()
    if gap is None:
        return 1.0
    stretch = gap / (2 * settings.NODE_HEARTBEAT_SECONDS)
    return min(max(stretch, 1.0), settings.NODE_LOSS_MAX_STRETCH)


def loss_held(*, down: int, total: int) -> bool:
    """Are so many of the `total` nodes silent or offline (`down`) that the loss of the
    silent ones is held (NODE_LOSS_HOLD_SHARE, NODE_LOSS_HOLD_MIN_NODES)? Offline nodes
    count, as Kubernetes counts the nodes not ready in a zone: else a mass silence would
    stop being one as its nodes went offline one by one."""
    return (
        down >= settings.NODE_LOSS_HOLD_MIN_NODES and down >= settings.NODE_LOSS_HOLD_SHARE * total
    )


# Nothing allocated on the node: every allocation holds at least one CPU milli, since a
# job must request some CPU, so zero counters mean no live allocation.
EMPTY = Q(allocated_cpu_millis=0, allocated_memory_mb=0, allocated_gpu=0)
# The question every scheduling cycle asks first, as a prepared statement (EMPTY, spelt
# in SQL): it is nearly always "no".
_DRAINED_EXIST_SQL = """
SELECT EXISTS (SELECT FROM nodes_node
                WHERE status = %(draining)s AND allocated_cpu_millis = 0
                  AND allocated_memory_mb = 0 AND allocated_gpu = 0)
"""


_TRANSITION_EVENTS = {
    NodeStatus.CORDONED: EventType.NODE_CORDONED,
    NodeStatus.DRAINING: EventType.NODE_DRAINING,
    NodeStatus.READY: EventType.NODE_UNCORDONED,
}


def _node_after_transition(*, name: str, changed: bool, unchanged_ok: tuple, action: str) -> Node:
    """The node once a transition ran (and its event, in the transition's transaction); an
    error if it could not run on this node."""
    node = Node.objects.get(name=name)
    if not changed and node.status not in unchanged_ok:
        raise ValidationError(f"Node {name} is {node.status}; it cannot be {action}.")
    if changed:
        drained = action == "drained" and node.status == NodeStatus.CORDONED
        event_record(
            type=EventType.NODE_DRAINED if drained else _TRANSITION_EVENTS[node.status],
            message=f"{action}: {name} is now {node.status}",
            node_id=node.pk,
            data={"node": name, "status": node.status},
        )
        logger.info("node %s node=%s status=%s", action, name, node.status)
    return node


@transaction.atomic
def node_cordon(*, name: str) -> Node:
    """No new work goes to the node; what runs there carries on."""
    changed = Node.objects.filter(
        name=name, status__in=(NodeStatus.READY, NodeStatus.DRAINING)
    ).update(status=NodeStatus.CORDONED, updated_at=timezone.now())
    return _node_after_transition(
        name=name, changed=bool(changed), unchanged_ok=(NodeStatus.CORDONED,), action="cordoned"
    )


@transaction.atomic
def node_drain(*, name: str) -> Node:
    """No new work goes to the node; it becomes cordoned once nothing is left on it
    (at once if nothing is; otherwise `node_drain_complete` does it later)."""
    changed = Node.objects.filter(
        name=name, status__in=(NodeStatus.READY, NodeStatus.DRAINING)
    ).update(
        status=Case(
            When(EMPTY, then=Value(NodeStatus.CORDONED)), default=Value(NodeStatus.DRAINING)
        ),
        updated_at=timezone.now(),
    )
    return _node_after_transition(
        name=name, changed=bool(changed), unchanged_ok=(NodeStatus.CORDONED,), action="drained"
    )


@transaction.atomic
def node_uncordon(*, name: str) -> Node:
    """The node takes new work again; the scheduler is woken to give it some."""
    changed = Node.objects.filter(
        name=name, status__in=(NodeStatus.CORDONED, NodeStatus.DRAINING)
    ).update(status=NodeStatus.READY, updated_at=timezone.now())
    if changed:
        scheduler_wake()
    return _node_after_transition(
        name=name, changed=bool(changed), unchanged_ok=(NodeStatus.READY,), action="uncordoned"
    )


def node_drain_complete() -> int:
    """Draining nodes with nothing left on them become cordoned; how many did."""
    with prepared_cursor() as cursor:
        cursor.execute(_DRAINED_EXIST_SQL, {"draining": NodeStatus.DRAINING})
        (any_drained,) = cursor.fetchone()
    if not any_drained:
        return 0
    now = timezone.now()
    with transaction.atomic():
        drained = list(
            Node.objects.select_for_update()
            .filter(EMPTY, status=NodeStatus.DRAINING)
            .values_list("id", "name")
        )
        Node.objects.filter(id__in=[i for i, _ in drained]).update(
            status=NodeStatus.CORDONED, updated_at=now
        )
        events_record(
            Event(
                at=now,
                type=EventType.NODE_DRAINED,
                node_id=node_id,
                message=f"drained: {name} has nothing left on it and is now cordoned",
                data={"node": name, "status": NodeStatus.CORDONED},
            )
            for node_id, name in drained
        )
    logger.info("nodes drained, now cordoned nodes=%s", ",".join(n for _, n in drained))
    return len(drained)


def node_credential_issue(*, node_name: str) -> tuple[NodeCredential, str]:
    """A new credential for the agent of `node_name`, and its key (shown only now)."""
    prefix, key = secret_key_generate()
    credential = NodeCredential.objects.create(
        node_name=node_name, prefix=prefix, digest=secret_key_digest(key)
    )
    logger.info("node credential issued node=%s prefix=%s", node_name, prefix)
    return credential, key


# The live credential of a key's prefix, and its node's id: every call of every agent
# reads it, so it is one prepared statement rather than a query the ORM builds each time.
CREDENTIAL_FIELDS = [
    "id",
    "node_name",
    "prefix",
    "digest",
    "created_at",
    "last_used_at",
    "revoked_at",
]
CREDENTIAL_WITH_NODE_SQL = """
SELECT c.id, c.node_name, c.prefix, c.digest, c.created_at, c.last_used_at, c.revoked_at,
       (SELECT n.id FROM nodes_node n WHERE n.name = c.node_name)
  FROM nodes_nodecredential c
 WHERE c.prefix = %(prefix)s AND c.revoked_at IS NULL
"""


def node_credential_verify(key: str) -> NodeCredential | None:
    """The live credential for `key`, or None if it is unknown or revoked. It carries
    `node_id`, its node's id (None while the node is not registered), found in the same
    query: an agent's every call needs it."""
    prefix, _, _secret = key.partition(".")
    with prepared_cursor() as cursor:
        cursor.execute(CREDENTIAL_WITH_NODE_SQL, {"prefix": prefix})
        row = cursor.fetchone()
    if row is None:
        return None
    *values, node_id = row
    credential = NodeCredential.from_db(connection.alias, CREDENTIAL_FIELDS, values)
    credential.node_id = node_id
    if not secret_key_matches(digest=credential.digest, key=key):
        return None
    now = timezone.now()
    if credential.last_used_at is None or (now - credential.last_used_at).total_seconds() > 60:
        # Recorded at most once a minute so a heartbeat stays a single read here.
        NodeCredential.objects.filter(pk=credential.pk).update(last_used_at=now)
    return credential


def node_credential_revoke(*, credential: NodeCredential) -> bool:
    revoked = NodeCredential.objects.filter(pk=credential.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    if revoked:
        logger.info(
            "node credential revoked node=%s prefix=%s", credential.node_name, credential.prefix
        )
    return bool(revoked)


def node_credentials_revoke(*, node_name: str) -> int:
    """Revoke every live credential of a node; how many were."""
    revoked = NodeCredential.objects.filter(node_name=node_name, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    logger.info("node credentials revoked node=%s count=%s", node_name, revoked)
    return revoked
