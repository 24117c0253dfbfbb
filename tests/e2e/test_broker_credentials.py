"""A node agent on RabbitMQ with its own broker user (manage.py rabbitmq_node_users):
what that user may do is enough to run jobs, send events and answer remote control."""

import io
import socket

import pytest
from django.core.management import call_command

from jobs.models import Job, JobStatus
from nodes.rabbitmq import broker_vhost
from tests.processes import wait_until
from tests.rabbitmq import rabbitmqctl, vhost_queues_delete

pytestmark = pytest.mark.e2e


@pytest.fixture
def node_a_user(rabbitmq, settings, cluster):
    """Node node-a's own user, deleted once the cluster's processes stopped."""
    settings.CELERY_BROKER_URL = rabbitmq
    call_command(
        "rabbitmq_node_users",
        "node-a",
        "--apply",
        "--password=node-a-password",
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    yield rabbitmq.replace("guest:guest@", "node.node-a:node-a-password@")
    cluster.stop_all()
    rabbitmqctl("delete_user", "node.node-a")


def test_a_node_runs_jobs_with_only_its_own_broker_permissions(cluster, api, rabbitmq, node_a_user):
    vhost_queues_delete(rabbitmq)
    cluster.use_broker(rabbitmq)  # the control plane: guest, every permission
    node = cluster.start_node("node-a", cpu=1, env={"CELERY_BROKER_URL": node_a_user})
    cluster.start_scheduler()
    ids = [
        api.post("/api/jobs/", {"name": f"j{i}", "command": ["true"]}, format="json").json()["id"]
        for i in range(3)
    ]
    wait_until(
        lambda: Job.objects.filter(id__in=ids, status=JobStatus.SUCCEEDED).count() == len(ids),
        30,
        message="the jobs to succeed",
    )
    assert "ACCESS_REFUSED" not in node.log()
    assert node.alive
    # It listens for remote control on its own pidbox queue (exclusive: only the broker's
    # listing sees it).
    listing = rabbitmqctl(
        "list_queues", "-p", broker_vhost(rabbitmq), "name", "consumers", "--no-table-headers"
    )
    consumers = dict(line.split("\t") for line in listing.splitlines() if line.strip())
    assert consumers[f"node-a@{socket.gethostname()}.celery.pidbox"] == "1"
