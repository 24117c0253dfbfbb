"""Node writes: registration, loss, and the cordon, drain and uncordon transitions."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from common.wakeup import SCHEDULER_CHANNEL
from events.models import Event, EventType
from nodes import services
from nodes.models import Node, NodeLoss, NodeStatus
from nodes.services import (
    NodeUsage,
    node_cordon,
    node_drain,
    node_drain_complete,
    node_heartbeat,
    node_register,
    node_uncordon,
    nodes_mark_lost,
)
from scheduler_site.celery import app as celery_app
from tests.processes import free_port, raw_connection

pytestmark = pytest.mark.django_db


def make_node(name="node-a", **fields) -> Node:
    return Node.objects.create(name=name, **{"cpu_millis": 4000, "memory_mb": 8192, **fields})


def status_of(name) -> str:
    return Node.objects.get(name=name).status


# --- Registration ---------------------------------------------------------------------


def test_registering_a_new_node_creates_it_ready_with_its_capacity():
    before = timezone.now()
    node_register(
        name="node-a",
        cpu_millis=2500,
        memory_mb=4096,
        gpu=1,
        labels={"zone": "a"},
        address="10.0.0.7",
        agent_version="1.4",
    )
    node = Node.objects.get()
    assert (node.name, node.status) == ("node-a", NodeStatus.READY)
    assert (node.cpu_millis, node.memory_mb, node.gpu) == (2500, 4096, 1)
    assert (node.allocated_cpu_millis, node.allocated_memory_mb, node.allocated_gpu) == (0, 0, 0)
    assert (node.labels, node.address, node.agent_version) == ({"zone": "a"}, "10.0.0.7", "1.4")
    assert node.last_heartbeat >= before


def test_registering_again_updates_the_capacity_and_forgets_what_the_old_agent_ran():
    make_node(
        cpu_millis=2000,
        memory_mb=1024,
        allocated_cpu_millis=1000,
        allocated_memory_mb=100,
        labels={"zone": "a"},
        running_tokens=["job-1-attempt-1"],
        used_cpu_millis=900,
        used_memory_mb=80,
        last_heartbeat=timezone.now() - timedelta(minutes=5),
    )
    before = timezone.now()
    node_register(name="node-a", cpu_millis=4000, memory_mb=8192, labels={"zone": "b"})
    node = Node.objects.get()
    assert (node.cpu_millis, node.memory_mb, node.labels) == (4000, 8192, {"zone": "b"})
    # What the old agent's executions hold stays until they are failed over or finish.
    assert (node.allocated_cpu_millis, node.allocated_memory_mb) == (1000, 100)
    assert node.running_tokens == []
    assert (node.used_cpu_millis, node.used_memory_mb) == (None, None)
    assert node.last_heartbeat >= before


@pytest.mark.parametrize(
    "capacity",
    [
        {"cpu_millis": 1000, "memory_mb": 8192, "gpu": 1},
        {"cpu_millis": 4000, "memory_mb": 100, "gpu": 1},
        {"cpu_millis": 4000, "memory_mb": 8192, "gpu": 0},
    ],
)
def test_registering_less_capacity_than_is_allocated_is_refused(capacity):
    make_node(
        gpu=1,
        allocated_cpu_millis=2000,
        allocated_memory_mb=512,
        allocated_gpu=1,
        labels={"zone": "a"},
    )
    with pytest.raises(ValidationError) as refused:
        node_register(name="node-a", labels={"zone": "b"}, **capacity)
    assert refused.value.messages == [
        "Node node-a has more allocated (2000 CPU millis, 512 MB, 1 GPU) than the new "
        "capacity; drain it first."
    ]
    node = Node.objects.get()
    assert (node.cpu_millis, node.memory_mb, node.gpu, node.labels) == (
        4000,
        8192,
        1,
        {"zone": "a"},
    )


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (NodeStatus.OFFLINE, NodeStatus.READY),
        # An operator's decision outlives the agent.
        (NodeStatus.CORDONED, NodeStatus.CORDONED),
        (NodeStatus.DRAINING, NodeStatus.DRAINING),
    ],
)
def test_a_registering_node_comes_back_ready_unless_an_operator_took_it_out(before, after):
    make_node(status=before)
    assert node_register(name="node-a", cpu_millis=4000, memory_mb=8192).status == after
    assert status_of("node-a") == after


@pytest.mark.django_db(transaction=True)
def test_registering_and_uncordoning_wake_the_scheduler_and_a_no_op_does_not():
    with raw_connection() as listener:
        listener.execute(f"LISTEN {SCHEDULER_CHANNEL}")

        def woken() -> bool:
            return bool(list(listener.notifies(timeout=0.3, stop_after=1)))

        node_register(name="node-a", cpu_millis=4000, memory_mb=8192)
        assert woken()
        node_uncordon(name="node-a")  # already ready
        assert not woken()
        node_cordon(name="node-a")
        node_uncordon(name="node-a")
        assert woken()


# --- Heartbeats -----------------------------------------------------------------------


def test_a_heartbeat_records_what_the_jobs_used_and_an_unsaid_figure_is_not_kept():
    make_node()
    at = timezone.now()
    used = NodeUsage(cpu_millis=1500, memory_mb=300)
    assert node_heartbeat(name="node-a", at=at, running_tokens=["job-1-attempt-1"], used=used)
    node = Node.objects.get()
    assert (node.last_heartbeat, node.running_tokens) == (at, ["job-1-attempt-1"])
    assert (node.used_cpu_millis, node.used_memory_mb) == (1500, 300)

    assert node_heartbeat(name="node-a", at=at, running_tokens=[])
    node.refresh_from_db()
    assert (node.used_cpu_millis, node.used_memory_mb) == (None, None)
    assert not node_heartbeat(name="nowhere", at=at, running_tokens=[], used=used)


def test_a_heartbeat_records_how_long_after_the_one_before_it_came():
    make_node(last_heartbeat=None)
    at = timezone.now()
    node_heartbeat(name="node-a", at=at, running_tokens=[])
    assert Node.objects.get().heartbeat_gap_seconds is None  # the first: no gap yet
    node_heartbeat(name="node-a", at=at + timedelta(seconds=7.5), running_tokens=[])
    assert Node.objects.get().heartbeat_gap_seconds == 7.5
    # A new agent starts without one.
    node_register(name="node-a", cpu_millis=4000, memory_mb=8192)
    assert Node.objects.get().heartbeat_gap_seconds is None


# --- Loss -----------------------------------------------------------------------------


def test_a_silent_node_goes_offline_and_a_live_one_stays(db):
    now = timezone.now()
    Node.objects.create(
        name="silent",
        cpu_millis=1000,
        memory_mb=1024,
        last_heartbeat=now - timezone.timedelta(seconds=60),
    )
    Node.objects.create(name="alive", cpu_millis=1000, memory_mb=1024, last_heartbeat=now)
    assert nodes_mark_lost(older_than_seconds=30) == ["silent"]
    assert nodes_mark_lost(older_than_seconds=30) == []
    assert Node.objects.get(name="alive").status == NodeStatus.READY


def test_each_time_a_node_is_lost_is_recorded_once_and_outlives_the_node():
    silent_since = timezone.now() - timedelta(seconds=60)
    node = make_node(last_heartbeat=silent_since)
    assert nodes_mark_lost(older_than_seconds=30) == ["node-a"]
    assert nodes_mark_lost(older_than_seconds=30) == []
    loss = NodeLoss.objects.get()
    assert (loss.node_name, loss.last_heartbeat) == ("node-a", silent_since)
    assert loss.lost_at > silent_since

    node_register(name="node-a", cpu_millis=4000, memory_mb=8192)
    Node.objects.filter(pk=node.pk).update(last_heartbeat=silent_since)
    assert nodes_mark_lost(older_than_seconds=30) == ["node-a"]
    node.delete()
    assert NodeLoss.objects.filter(node_name="node-a").count() == 2


def silent_nodes(count: int, *, heard: int) -> list[str]:
    """`count` nodes silent for 60 s and more (node-0 the longest), and `heard` more
    heard from now; the silent ones' names."""
    now = timezone.now()
    for i in range(heard):
        make_node(f"heard-{i}", last_heartbeat=now)
    for i in range(count):
        make_node(f"node-{i}", last_heartbeat=now - timedelta(seconds=60 + count - i))
    return [f"node-{i}" for i in range(count)]


def test_when_most_nodes_fall_silent_at_once_they_are_failed_over_one_per_window():
    names = silent_nodes(4, heard=1)  # 4 of 5: over the 0.55 share
    assert nodes_mark_lost(older_than_seconds=30) == ["node-0"]  # the longest silent
    assert nodes_mark_lost(older_than_seconds=30) == []  # one per 30 s
    assert [status_of(n) for n in names] == [NodeStatus.OFFLINE, *["ready"] * 3]
    # The offline count as down: the hold lasts while the nodes go, one per window.
    for name in ("node-1", "node-2", "node-3"):
        NodeLoss.objects.update(lost_at=timezone.now() - timedelta(seconds=31))
        assert nodes_mark_lost(older_than_seconds=30) == [name]
        assert nodes_mark_lost(older_than_seconds=30) == []


def test_fewer_down_than_the_share_or_than_three_go_at_once(settings):
    assert nodes_mark_lost(older_than_seconds=30) == []
    assert silent_nodes(2, heard=0) == nodes_mark_lost(older_than_seconds=30)
    Node.objects.all().delete()
    silent_nodes(4, heard=4)  # half: under the share
    assert len(nodes_mark_lost(older_than_seconds=30)) == 4
    # One more silent node makes 5 of 9 down: held, and as four went just now, it waits.
    make_node("late", last_heartbeat=timezone.now() - timedelta(seconds=60))
    Node.objects.filter(name__startswith="heard").update(last_heartbeat=timezone.now())
    assert nodes_mark_lost(older_than_seconds=30) == []
    Node.objects.all().delete()
    settings.NODE_LOSS_HOLD_SHARE = 1.0  # no hold short of every node down
    silent_nodes(4, heard=1)
    assert len(nodes_mark_lost(older_than_seconds=30)) == 4


def nodes_heard_every(gap: float, count: int, *, silent_for: float, prefix="node") -> list[str]:
    """`count` nodes whose heartbeats came `gap` seconds apart, the last `silent_for`
    seconds ago."""
    beat = timezone.now() - timedelta(seconds=silent_for)
    for i in range(count):
        make_node(f"{prefix}-{i}", last_heartbeat=beat, heartbeat_gap_seconds=gap)
    return [f"{prefix}-{i}" for i in range(count)]


def test_while_every_node_is_heard_late_the_loss_waits_in_proportion(settings):
    """Heartbeats 40 s apart where 5 s are expected (a web server with a backlog): a
    silence of 50 s is no loss, as the time is stretched 40 / (2 x 5) = 4 times, to
    120 s; one of 130 s still is, and the stretch is capped."""
    settings.NODE_HEARTBEAT_SECONDS = 5
    late = nodes_heard_every(40, 5, silent_for=50)
    assert services.node_loss_stretch() == 4
    assert nodes_mark_lost(older_than_seconds=30) == []
    assert {status_of(name) for name in late} == {NodeStatus.READY}
    make_node("dead", last_heartbeat=timezone.now() - timedelta(seconds=130))
    assert nodes_mark_lost(older_than_seconds=30) == ["dead"]
    settings.NODE_LOSS_MAX_STRETCH = 1.5  # 45 s at most
    settings.NODE_LOSS_HOLD_SHARE = 2.0  # all silent at once: not held here
    assert services.node_loss_stretch() == 1.5
    assert sorted(nodes_mark_lost(older_than_seconds=30)) == late
    assert services.node_loss_stretch() == 1  # the offline's gaps do not count


def test_dead_nodes_among_nodes_heard_on_time_are_lost_on_time(settings):
    """The stretch is the median node's: nodes that died keep their last gap, and a
    minority of them, with whatever gap, does not delay their own loss; heartbeats
    somewhat late (under twice the interval apart) stretch nothing."""
    settings.NODE_HEARTBEAT_SECONDS = 5
    nodes_heard_every(9, 4, silent_for=1, prefix="heard")
    dead = nodes_heard_every(5, 2, silent_for=31, prefix="dead")
    Node.objects.filter(name="dead-1").update(heartbeat_gap_seconds=300)
    assert services.node_loss_stretch() == 1
    assert sorted(nodes_mark_lost(older_than_seconds=30)) == dead


@pytest.mark.parametrize("status", [NodeStatus.CORDONED, NodeStatus.DRAINING])
def test_a_silent_cordoned_or_draining_node_goes_offline_too(status):
    make_node(status=status, last_heartbeat=timezone.now() - timedelta(seconds=60))
    assert nodes_mark_lost(older_than_seconds=30) == ["node-a"]
    assert status_of("node-a") == NodeStatus.OFFLINE


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (NodeStatus.READY, NodeStatus.READY),
        (NodeStatus.CORDONED, NodeStatus.CORDONED),
        # Its executions were failed over when it was lost: the drain is over.
        (NodeStatus.DRAINING, NodeStatus.CORDONED),
    ],
)
@pytest.mark.django_db(transaction=True)
def test_a_lost_node_whose_agent_heartbeats_again_comes_back_as_it_was(before, after):
    make_node(status=before, last_heartbeat=timezone.now() - timedelta(seconds=60))
    assert nodes_mark_lost(older_than_seconds=30) == ["node-a"]
    assert NodeLoss.objects.get().status_before == before
    at = timezone.now()
    with raw_connection() as listener:
        listener.execute(f"LISTEN {SCHEDULER_CHANNEL}")
        assert node_heartbeat(name="node-a", at=at, running_tokens=["job-1-attempt-1"])
        woken = list(listener.notifies(timeout=0.5, stop_after=1))
    node = Node.objects.get()
    assert (node.status, node.last_heartbeat, node.running_tokens) == (
        after,
        at,
        ["job-1-attempt-1"],
    )
    # Only a node that takes work again is worth a scheduling cycle.
    assert len(woken) == (1 if after == NodeStatus.READY else 0)
    (back,) = Event.objects.filter(type=EventType.NODE_BACK)
    assert back.data == {"node": "node-a", "status": after}
    # The next heartbeats are ordinary ones.
    assert node_heartbeat(name="node-a", at=timezone.now(), running_tokens=[])
    assert Event.objects.filter(type=EventType.NODE_BACK).count() == 1


def test_a_node_whose_agent_cannot_reach_the_broker_is_not_counted_alive_and_goes_offline():
    silent_since = timezone.now() - timedelta(seconds=20)
    make_node(last_heartbeat=silent_since)
    for _ in range(2):
        assert node_heartbeat(
            name="node-a",
            at=timezone.now(),
            running_tokens=["job-1-attempt-1"],
            broker_reachable=False,
        )
    node = Node.objects.get()
    assert (node.last_heartbeat, node.running_tokens) == (silent_since, ["job-1-attempt-1"])
    (told,) = Event.objects.filter(type=EventType.NODE_BROKER_UNREACHABLE)
    assert told.message == (
        "broker unreachable: node-a reaches the API but not the broker; "
        "it goes offline unless it reconnects"
    )
    assert nodes_mark_lost(older_than_seconds=10) == ["node-a"]
    # Offline, it stays so until it reaches the broker again.
    node_heartbeat(name="node-a", at=timezone.now(), running_tokens=[], broker_reachable=False)
    assert status_of("node-a") == NodeStatus.OFFLINE
    assert Event.objects.filter(type=EventType.NODE_BROKER_UNREACHABLE).count() == 1
    node_heartbeat(name="node-a", at=timezone.now(), running_tokens=[])
    assert status_of("node-a") == NodeStatus.READY
    # A later outage is told again.
    node_heartbeat(name="node-a", at=timezone.now(), running_tokens=[], broker_reachable=False)
    assert Event.objects.filter(type=EventType.NODE_BROKER_UNREACHABLE).count() == 2
    assert not node_heartbeat(
        name="nowhere", at=timezone.now(), running_tokens=[], broker_reachable=False
    )


def test_when_the_control_plane_cannot_reach_the_broker_either_the_node_stays_up(
    monkeypatch,
):
    # The broker is down for everyone, not this node's link: its heartbeats count.
    monkeypatch.setattr(services, "_broker_checked", (-float("inf"), True))
    monkeypatch.setattr(celery_app.conf, "broker_write_url", f"redis://127.0.0.1:{free_port()}/0")
    make_node(last_heartbeat=timezone.now() - timedelta(seconds=20))
    at = timezone.now()
    assert node_heartbeat(name="node-a", at=at, running_tokens=[], broker_reachable=False)
    assert Node.objects.get().last_heartbeat == at
    assert not Event.objects.filter(type=EventType.NODE_BROKER_UNREACHABLE).exists()


def test_a_lost_cordoned_node_registered_again_stays_cordoned():
    make_node(status=NodeStatus.CORDONED, last_heartbeat=timezone.now() - timedelta(seconds=60))
    nodes_mark_lost(older_than_seconds=30)
    node_register(name="node-a", cpu_millis=4000, memory_mb=8192)
    assert status_of("node-a") == NodeStatus.CORDONED
    # Once uncordoned and lost again, it comes back ready: the latest loss counts.
    node_uncordon(name="node-a")
    Node.objects.update(last_heartbeat=timezone.now() - timedelta(seconds=60))
    nodes_mark_lost(older_than_seconds=30)
    node_register(name="node-a", cpu_millis=4000, memory_mb=8192)
    assert status_of("node-a") == NodeStatus.READY


# --- Cordon, drain, uncordon ----------------------------------------------------------


@pytest.mark.parametrize(
    ("transition", "before", "after"),
    [
        (node_cordon, NodeStatus.READY, NodeStatus.CORDONED),
        (node_cordon, NodeStatus.DRAINING, NodeStatus.CORDONED),
        (node_cordon, NodeStatus.CORDONED, NodeStatus.CORDONED),
        # Nothing on the node: drained at once.
        (node_drain, NodeStatus.READY, NodeStatus.CORDONED),
        (node_drain, NodeStatus.DRAINING, NodeStatus.CORDONED),
        (node_drain, NodeStatus.CORDONED, NodeStatus.CORDONED),
        (node_uncordon, NodeStatus.CORDONED, NodeStatus.READY),
        (node_uncordon, NodeStatus.DRAINING, NodeStatus.READY),
        (node_uncordon, NodeStatus.READY, NodeStatus.READY),
    ],
)
def test_cordon_drain_and_uncordon_lead_to_their_status_from_any_live_one(
    transition, before, after
):
    make_node(status=before)
    assert transition(name="node-a").status == after
    assert status_of("node-a") == after


@pytest.mark.parametrize(
    ("transition", "action"),
    [(node_cordon, "cordoned"), (node_drain, "drained"), (node_uncordon, "uncordoned")],
)
def test_an_offline_node_cannot_be_cordoned_drained_or_uncordoned(transition, action):
    make_node(status=NodeStatus.OFFLINE)
    with pytest.raises(ValidationError) as refused:
        transition(name="node-a")
    assert refused.value.messages == [f"Node node-a is offline; it cannot be {action}."]
    assert status_of("node-a") == NodeStatus.OFFLINE


def test_a_transition_of_an_unknown_node_is_refused():
    with pytest.raises(Node.DoesNotExist):
        node_cordon(name="nowhere")
    assert not Node.objects.exists()


@pytest.mark.parametrize("before", [NodeStatus.READY, NodeStatus.DRAINING])
def test_draining_a_node_with_work_on_it_keeps_it_draining(before):
    make_node(status=before, allocated_cpu_millis=1000, allocated_memory_mb=100)
    assert node_drain(name="node-a").status == NodeStatus.DRAINING
    assert status_of("node-a") == NodeStatus.DRAINING


def test_a_drain_completes_once_nothing_is_left_on_the_node():
    make_node("empty", status=NodeStatus.DRAINING)
    make_node("busy", status=NodeStatus.DRAINING, allocated_cpu_millis=1000, allocated_memory_mb=1)
    make_node("gpu-held", status=NodeStatus.DRAINING, gpu=1, allocated_gpu=1)
    make_node("ready")
    assert node_drain_complete() == 1
    statuses = dict(Node.objects.values_list("name", "status"))
    assert statuses == {
        "empty": NodeStatus.CORDONED,
        "busy": NodeStatus.DRAINING,
        "gpu-held": NodeStatus.DRAINING,
        "ready": NodeStatus.READY,
    }
    assert node_drain_complete() == 0
