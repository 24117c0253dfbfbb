"""Events with real processes: a node agent SIGKILLed mid-job leaves the job's timeline in
order, the node's own events say it went offline and came back, and a staff node_offline
rule fires once and resolves when the agent returns."""

import pytest

from events.models import Event
from jobs.models import JobStatus
from nodes.models import Node
from tests.processes import wait_until

pytestmark = pytest.mark.e2e


def test_a_killed_agents_job_has_its_whole_timeline_in_order(
    cluster, api, staff_api, tmp_path, webhook
):
    marker = tmp_path / "started"
    rule = staff_api.post(
        "/api/alerts/",
        {
            "name": "nodes",
            "condition": "node_offline",
            "channels": [{"kind": "webhook", "target": webhook.url}],
        },
        format="json",
    ).json()
    cluster.start_maintenance()
    node_a = cluster.start_node("node-a", cpu=1)
    cluster.start_scheduler()
    job_id = api.post(
        "/api/jobs/",
        {
            "name": "survivor",
            "command": [
                "sh",
                "-c",
                f'touch {marker}; if [ "$NODE_NAME" = node-a ]; then sleep 60; fi',
            ],
        },
        format="json",
    ).json()["id"]
    wait_until(marker.exists, 20, message="the job to start on node-a")
    cluster.start_node("node-b", cpu=1)
    node_a.kill()

    def status():
        return api.get(f"/api/jobs/{job_id}/").json()["status"]

    wait_until(lambda: status() == JobStatus.SUCCEEDED, 40, message="the job to succeed on b")
    timeline = api.get(f"/api/jobs/{job_id}/events/").json()
    assert [(e["type"], e["node"]) for e in timeline] == [
        ("job.submitted", None),
        ("job.placed", "node-a"),
        ("job.started", "node-a"),
        ("job.node_lost", "node-a"),
        ("job.retry_planned", None),
        ("job.placed", "node-b"),
        ("job.started", "node-b"),
        ("job.succeeded", "node-b"),
    ]
    assert [e["attempt"] for e in timeline[1:]] == [1, 1, 1, 2, 2, 2, 2]

    wait_until(lambda: webhook.of_kind("fired", rule["id"]), 20, message="the node alert")
    cluster.start_node("node-a", cpu=1)
    wait_until(lambda: webhook.of_kind("resolved", rule["id"]), 20, message="its resolution")
    [fired] = webhook.of_kind("fired", rule["id"])
    assert fired.json["incident"]["subject"]["node_name"] == "node-a"
    assert len(webhook.of_kind("fired", rule["id"])) == 1
    node_a_id = Node.objects.get(name="node-a").pk
    node_events = staff_api.get("/api/events/?node=node-a").json()["results"]
    own = [e["type"] for e in node_events if e["job"] is None]
    assert own[:4] == ["alert.resolved", "node.back", "alert.fired", "node.offline"]
    assert Event.objects.filter(node_id=node_a_id, type="node.offline").count() == 1
    # A member sees what node-a did to their job, and nothing of the node's own events.
    mine = api.get("/api/events/?node=node-a").json()["results"]
    assert {e["type"] for e in mine} == {"job.placed", "job.started", "job.node_lost"}
