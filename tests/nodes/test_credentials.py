"""Node agents register and heartbeat with their own credential, good for one node only."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from nodes.api import NodeSerializer
from nodes.models import Node, NodeCredential
from nodes.services import node_credential_issue

pytestmark = pytest.mark.django_db

REGISTER = {"name": "node-a", "cpu": "2.5", "memory_mb": 4096, "gpu": 1, "labels": {"zone": "a"}}


def node_client(key) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {key}")
    return client


@pytest.fixture
def agent(db):
    return node_client(node_credential_issue(node_name="node-a")[1])


def test_issue_node_token_prints_a_key_stored_only_as_a_digest(db):
    out = StringIO()
    call_command("issue_node_token", "node-a", stdout=out, stderr=StringIO())
    key = out.getvalue().strip()
    credential = NodeCredential.objects.get()
    assert credential.node_name == "node-a"
    stored = " ".join(str(v) for v in NodeCredential.objects.values().get().values())
    assert key not in stored and key.split(".", 1)[1] not in stored
    response = node_client(key).post("/api/nodes/register/", REGISTER, format="json")
    assert response.status_code == 200, response.content
    for forged in (credential.digest, f"{credential.prefix}.{credential.digest}"):
        assert (
            node_client(forged).post("/api/nodes/register/", REGISTER, format="json").status_code
            == 401
        )


def test_an_agent_registers_and_heartbeats_its_node(agent):
    response = agent.post("/api/nodes/register/", REGISTER, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["capacity"] == {"cpu": 2.5, "memory_mb": 4096, "gpu": 1}
    assert body["labels"] == {"zone": "a"} and body["status"] == "ready"
    Node.objects.filter(name="node-a").update(last_heartbeat=None)
    beat = agent.post(
        "/api/nodes/node-a/heartbeat/", {"running_tokens": ["job-1-attempt-1"]}, format="json"
    )
    assert beat.status_code == 200, beat.content
    node = Node.objects.get(name="node-a")
    assert node.last_heartbeat is not None and node.running_tokens == ["job-1-attempt-1"]
    assert beat.json()["used"] == {"cpu": None, "memory_mb": None}


def test_a_heartbeat_says_what_the_jobs_used(agent):
    agent.post("/api/nodes/register/", REGISTER, format="json")
    beat = agent.post(
        "/api/nodes/node-a/heartbeat/",
        {"running_tokens": [], "used": {"cpu": "1.25", "memory_mb": 300}},
        format="json",
    )
    assert beat.status_code == 200, beat.content
    assert beat.json()["used"] == {"cpu": 1.25, "memory_mb": 300}
    node = Node.objects.get(name="node-a")
    assert (node.used_cpu_millis, node.used_memory_mb) == (1250, 300)
    # The answer, made from what the heartbeat's update returned, is the node as read.
    assert beat.json() == NodeSerializer(node).data


def test_a_heartbeat_without_the_broker_is_recorded_but_not_as_a_sign_of_life(agent):
    agent.post("/api/nodes/register/", REGISTER, format="json")
    Node.objects.filter(name="node-a").update(last_heartbeat=None)
    beat = agent.post(
        "/api/nodes/node-a/heartbeat/",
        {"running_tokens": ["job-1-attempt-1"], "broker_reachable": False},
        format="json",
    )
    assert beat.status_code == 200, beat.content
    node = Node.objects.get(name="node-a")
    assert node.last_heartbeat is None and node.running_tokens == ["job-1-attempt-1"]


def test_a_credential_cannot_register_or_heartbeat_another_node(agent):
    Node.objects.create(name="node-b", cpu_millis=1000, memory_mb=1024)
    other = agent.post("/api/nodes/register/", {**REGISTER, "name": "node-b"}, format="json")
    assert other.status_code == 403
    assert agent.post("/api/nodes/node-b/heartbeat/", {}, format="json").status_code == 403
    assert Node.objects.get(name="node-b").cpu_millis == 1000
    assert Node.objects.get(name="node-b").last_heartbeat is None


def test_a_heartbeat_before_registration_is_404(agent):
    assert agent.post("/api/nodes/node-a/heartbeat/", {}, format="json").status_code == 404


def test_a_revoked_credential_answers_401(db):
    out = StringIO()
    call_command("issue_node_token", "node-a", stdout=out, stderr=StringIO())
    old = node_client(out.getvalue().strip())
    rotated = StringIO()
    call_command(
        "issue_node_token", "node-a", "--revoke-existing", stdout=rotated, stderr=StringIO()
    )
    assert old.post("/api/nodes/register/", REGISTER, format="json").status_code == 401
    new = node_client(rotated.getvalue().strip())
    assert new.post("/api/nodes/register/", REGISTER, format="json").status_code == 200


def test_user_tokens_cannot_register_nodes(staff_api, api):
    for client in (staff_api, api, APIClient()):
        assert client.post("/api/nodes/register/", REGISTER, format="json").status_code == 401
    assert not Node.objects.exists()


def test_a_node_credential_is_not_a_user_token(agent):
    agent.post("/api/nodes/register/", REGISTER, format="json")
    key = agent._credentials["HTTP_AUTHORIZATION"].split()[1]
    user_client = APIClient()
    user_client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert user_client.get("/api/nodes/").status_code == 401
    assert agent.get("/api/nodes/").status_code == 401


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({**REGISTER, "name": "Node_A"}, "name"),
        ({**REGISTER, "name": "register"}, "name"),
        ({**REGISTER, "cpu": 0}, "cpu"),
        ({**REGISTER, "cpu": "many"}, "cpu"),
        ({**REGISTER, "memory_mb": -1}, "memory_mb"),
        ({**REGISTER, "labels": ["zone"]}, "labels"),
        ({**REGISTER, "labels": {f"k{i}": "v" for i in range(33)}}, "labels"),
        ({**REGISTER, "slots": 4}, "slots"),
        ({k: v for k, v in REGISTER.items() if k != "memory_mb"}, "memory_mb"),
    ],
)
def test_bad_registration_is_a_400_naming_the_field(agent, payload, field):
    response = agent.post("/api/nodes/register/", payload, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert not Node.objects.exists()


@pytest.mark.parametrize(
    "payload",
    [
        {"running_tokens": "job-1"},
        {"running_tokens": [["x"]]},
        {"running_tokens": ["x" * 101]},
        {"tokens": []},
        ["job-1"],
        {"used": {"cpu": -1, "memory_mb": 1}},
        {"used": {"cpu": 1}},
        {"used": {"cpu": 1, "memory_mb": 2**31}},
        {"used": {"cpu": 1, "memory_mb": 1, "gpu": 1}},
        {"used": 5},
        {"broker_reachable": "perhaps"},
    ],
)
def test_a_bad_heartbeat_is_a_400(agent, payload):
    agent.post("/api/nodes/register/", REGISTER, format="json")
    response = agent.post("/api/nodes/node-a/heartbeat/", payload, format="json")
    assert response.status_code == 400, response.content


def test_shrinking_below_what_is_allocated_is_a_400(agent):
    agent.post("/api/nodes/register/", REGISTER, format="json")
    Node.objects.filter(name="node-a").update(allocated_cpu_millis=2000)
    response = agent.post("/api/nodes/register/", {**REGISTER, "cpu": 1}, format="json")
    assert response.status_code == 400
    assert Node.objects.get(name="node-a").cpu_millis == 2500


def test_issue_node_token_with_count_prints_a_key_file_for_hollow_nodes(db):
    out = StringIO()
    call_command("issue_node_token", "hollow", "--count", "3", stdout=out, stderr=StringIO())
    lines = [line.split(" ") for line in out.getvalue().splitlines()]
    assert [name for name, _ in lines] == ["hollow-1", "hollow-2", "hollow-3"]
    assert set(NodeCredential.objects.values_list("node_name", flat=True)) == {
        "hollow-1",
        "hollow-2",
        "hollow-3",
    }
    name, key = lines[1]
    register = {**REGISTER, "name": name}
    assert node_client(key).post("/api/nodes/register/", register, format="json").status_code == 200
    other = {**REGISTER, "name": "hollow-1"}
    assert node_client(key).post("/api/nodes/register/", other, format="json").status_code == 403


@pytest.mark.parametrize("args", [["hollow", "--count", "0"], ["x" * 62, "--count", "10"]])
def test_issue_node_token_with_a_bad_count_or_prefix_issues_nothing(db, args):
    with pytest.raises(CommandError):
        call_command("issue_node_token", *args, stdout=StringIO(), stderr=StringIO())
    assert not NodeCredential.objects.exists()
