"""Each node's own RabbitMQ user (`manage.py rabbitmq_node_users`): it may use its own
queue, and not another node's."""

import io
import re
import subprocess

import amqp.exceptions
import pytest
from django.core.management import CommandError, call_command
from kombu import Connection

from nodes.models import Node
from nodes.rabbitmq import node_broker_permissions
from tests.rabbitmq import rabbitmqctl


def run_command(*args: str) -> str:
    out = io.StringIO()
    call_command("rabbitmq_node_users", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_it_prints_a_user_and_permissions_per_registered_node(db, settings):
    settings.CELERY_BROKER_URL = "amqp://admin:secret@mq.example:5672/jobs"
    Node.objects.create(name="gpu-01", cpu_millis=1000, memory_mb=1024)
    Node.objects.create(name="gpu-02", cpu_millis=1000, memory_mb=1024)
    printed = run_command()
    assert "rabbitmqctl add_user node.gpu-01" in printed
    assert "rabbitmqctl add_user node.gpu-02" in printed
    permissions = node_broker_permissions("gpu-01")
    assert (
        f"rabbitmqctl set_permissions -p jobs node.gpu-01 '{permissions.configure}' "
        f"'{permissions.write}' '{permissions.read}'"
    ) in printed
    url_line = "# CELERY_BROKER_URL for node gpu-01 (if its user was new): amqp://node.gpu-01:"
    assert url_line in printed
    assert "@mq.example:5672/jobs" in printed


def test_it_refuses_what_is_not_a_node_name(db):
    with pytest.raises(CommandError, match="Not node names"):
        run_command("node.a")


def test_a_node_pattern_matches_its_own_names_only():
    permissions = node_broker_permissions("node-a")
    read = re.compile(permissions.read)
    assert read.match("node.node-a")
    assert read.match("node.node-a.stops")
    assert read.match("node-a@host.example.com.celery.pidbox")
    assert read.match("celery.pidbox")
    others = (
        "node.node-ab",
        "node.node-b",
        "node.node-b.stops",
        "control",
        "node-ab@h.celery.pidbox",
        "celeryev",
    )
    for other in others:
        assert not read.match(other), other
    write = re.compile(permissions.write)
    assert write.match("celeryev")
    assert not write.match("amq.default")  # no publishing to any queue by its name
    assert not write.match("control")


@pytest.fixture
def node_users(rabbitmq, settings, db):
    """Users for nodes `mq-a` and `mq-b`, applied in the session's vhost; deleted after."""
    settings.CELERY_BROKER_URL = rabbitmq
    passwords = {"mq-a": "password-a", "mq-b": "password-b"}
    for name, password in passwords.items():
        run_command(name, "--apply", f"--password={password}")
    yield passwords
    for name in passwords:
        rabbitmqctl("delete_user", f"node.{name}")


def node_url(rabbitmq: str, name: str, password: str) -> str:
    return rabbitmq.replace("guest:guest@", f"node.{name}:{password}@")


def test_a_node_user_consumes_its_own_queue_and_not_another_nodes(rabbitmq, node_users):
    queues = ("node.mq-a", "node.mq-b", "node.mq-a.stops", "node.mq-b.stops")
    with Connection(rabbitmq) as admin:
        channel = admin.channel()
        for queue in queues:
            channel.queue_declare(queue=queue, durable=True, auto_delete=False)
            channel.basic_publish(amqp.Message("hello"), exchange="", routing_key=queue)
        channel.close()
    with Connection(node_url(rabbitmq, "mq-a", node_users["mq-a"])) as conn:
        channel = conn.channel()
        assert channel.basic_get("node.mq-a", no_ack=True).body == "hello"
        assert channel.basic_get("node.mq-a.stops", no_ack=True).body == "hello"
        for theirs in ("node.mq-b", "node.mq-b.stops"):
            with pytest.raises(amqp.exceptions.AccessRefused):
                channel.basic_get(theirs, no_ack=True)
            channel = conn.channel()
            with pytest.raises(amqp.exceptions.AccessRefused):
                channel.basic_consume(theirs, callback=lambda message: None)
            channel = conn.channel()
            with pytest.raises(amqp.exceptions.AccessRefused):
                channel.queue_purge(theirs)
            channel = conn.channel()
    # node-b's messages are still there for node-b.
    with Connection(node_url(rabbitmq, "mq-b", node_users["mq-b"])) as conn:
        channel = conn.channel()
        assert channel.basic_get("node.mq-b", no_ack=True).body == "hello"
        assert channel.basic_get("node.mq-b.stops", no_ack=True).body == "hello"


def test_applying_again_keeps_the_password_unless_given(rabbitmq, node_users):
    run_command("mq-a", "--apply")
    with Connection(node_url(rabbitmq, "mq-a", node_users["mq-a"])) as conn:
        conn.connect()


def test_the_printed_script_keeps_an_existing_users_password_unless_given(rabbitmq, node_users):
    vhost = rabbitmq.rsplit("/", 1)[1]
    printed = run_command("mq-a", f"--vhost={vhost}")
    # Run as printed, twice over (a script run again does no harm), without failing on
    # the user that exists.
    for _ in range(2):
        ran = subprocess.run(["bash", "-ec", printed], capture_output=True, text=True)
        assert ran.returncode == 0, ran.stderr
    with Connection(node_url(rabbitmq, "mq-a", node_users["mq-a"])) as conn:
        conn.connect()  # the password it had

    printed = run_command("mq-a", f"--vhost={vhost}", "--password=password-new")
    ran = subprocess.run(["bash", "-ec", printed], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    with Connection(node_url(rabbitmq, "mq-a", "password-new")) as conn:
        conn.connect()
