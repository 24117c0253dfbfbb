"""/api/nodes/: cordon, drain and uncordon, by staff only, as conditional transitions."""

import pytest

from nodes.models import Node, NodeStatus
from nodes.services import node_drain_complete
from tests.processes import raw_connection

pytestmark = pytest.mark.django_db


@pytest.fixture
def node(db):
    return Node.objects.create(name="node-a", cpu_millis=4000, memory_mb=4096)


def status_of(node) -> str:
    node.refresh_from_db()
    return node.status


def test_staff_cordon_a_node_and_uncordon_it(staff_api, node):
    response = staff_api.post("/api/nodes/node-a/cordon/")
    assert response.status_code == 200
    assert response.json()["status"] == "cordoned"
    assert status_of(node) == NodeStatus.CORDONED
    # Cordoning again changes nothing and is not an error.
    assert staff_api.post("/api/nodes/node-a/cordon/").status_code == 200
    response = staff_api.post("/api/nodes/node-a/uncordon/")
    assert (response.status_code, response.json()["status"]) == (200, "ready")
    assert status_of(node) == NodeStatus.READY


def test_draining_a_node_with_work_keeps_it_draining_until_the_work_is_gone(staff_api, node):
    Node.objects.filter(pk=node.pk).update(allocated_cpu_millis=1000, allocated_memory_mb=100)
    assert staff_api.post("/api/nodes/node-a/drain/").json()["status"] == "draining"
    assert node_drain_complete() == 0
    assert status_of(node) == NodeStatus.DRAINING
    Node.objects.filter(pk=node.pk).update(allocated_cpu_millis=0, allocated_memory_mb=0)
    assert node_drain_complete() == 1
    assert status_of(node) == NodeStatus.CORDONED
    # Draining a cordoned node leaves it cordoned.
    assert staff_api.post("/api/nodes/node-a/drain/").json()["status"] == "cordoned"


def test_draining_an_empty_node_cordons_it_at_once(staff_api, node):
    assert staff_api.post("/api/nodes/node-a/drain/").json()["status"] == "cordoned"


@pytest.mark.parametrize("action", ["cordon", "drain", "uncordon"])
def test_an_offline_node_cannot_be_cordoned_drained_or_uncordoned(staff_api, node, action):
    Node.objects.filter(pk=node.pk).update(status=NodeStatus.OFFLINE)
    response = staff_api.post(f"/api/nodes/node-a/{action}/")
    assert response.status_code == 400
    assert "offline" in response.json()["non_field_errors"][0]
    assert status_of(node) == NodeStatus.OFFLINE


@pytest.mark.parametrize("action", ["cordon", "drain", "uncordon"])
def test_members_may_not_change_a_node(api, node, action):
    Node.objects.filter(pk=node.pk).update(status=NodeStatus.CORDONED)
    assert api.post(f"/api/nodes/node-a/{action}/").status_code == 403
    assert status_of(node) == NodeStatus.CORDONED


def test_an_unknown_node_is_404(staff_api, db):
    assert staff_api.post("/api/nodes/nowhere/cordon/").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_uncordoning_wakes_the_scheduler(staff_api):
    Node.objects.create(name="node-b", cpu_millis=1000, memory_mb=1024, status=NodeStatus.CORDONED)
    with raw_connection() as listener:
        listener.execute("LISTEN scheduler_wakeup")
        staff_api.post("/api/nodes/node-b/uncordon/")
        assert list(listener.notifies(timeout=2, stop_after=1))
