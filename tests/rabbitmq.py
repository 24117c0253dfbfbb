"""RabbitMQ for the tests that run the platform on it: a vhost of the test session's own,
and a restart of the broker.

The tests are skipped, saying why, where RabbitMQ is not installed; where it is
installed and down, it is started (as scripts/test does).
"""

import os
import shutil
import subprocess

import pytest
from kombu import Connection

from nodes.rabbitmq import broker_vhost
from tests.processes import wait_until

RABBITMQ_HOST = os.environ.get("TEST_RABBITMQ_HOST", "127.0.0.1")
RABBITMQ_PORT = int(os.environ.get("TEST_RABBITMQ_PORT", "5672"))


def rabbitmq_installed() -> bool:
    return bool(shutil.which("rabbitmqctl") and shutil.which("rabbitmq-server"))


def rabbitmqctl(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["rabbitmqctl", "-q", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)}: {result.stderr or result.stdout}")
    return result.stdout


def _rabbitmq_answers() -> bool:
    result = subprocess.run(
        ["rabbitmqctl", "-q", "await_startup", "--timeout", "5"],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def restart_rabbitmq() -> None:
    """Stop the RabbitMQ application and start it again: every connection is cut; durable
    queues and their persistent messages come back."""
    rabbitmqctl("stop_app")
    rabbitmqctl("start_app")
    wait_until(_rabbitmq_answers, 60, interval=0.5, message="RabbitMQ to start")


def queue_depth(broker_url: str, queue: str) -> int:
    """Messages ready in `queue` (0 for a queue not declared)."""
    with Connection(broker_url) as conn:
        channel = conn.channel()
        try:
            return channel.queue_declare(queue=queue, passive=True).message_count
        except conn.channel_errors:
            return 0
        finally:
            if channel.is_open:
                channel.close()


def purge_queues(broker_url: str, queues: list[str]) -> None:
    """Every message waiting in `queues` is gone, as a broker losing them would."""
    with Connection(broker_url) as conn:
        for queue in queues:
            channel = conn.channel()
            try:
                channel.queue_purge(queue)
            except conn.channel_errors:
                pass
            finally:
                if channel.is_open:
                    channel.close()


@pytest.fixture(scope="session")
def rabbitmq() -> str:
    """The amqp:// URL of a vhost of this session's own (guest may do anything in it),
    deleted when the session ends."""
    if not rabbitmq_installed():
        pytest.skip("RabbitMQ is not installed here (apt-get install rabbitmq-server)")
    if not _rabbitmq_answers():
        subprocess.run(["rabbitmq-server", "-detached"], capture_output=True, check=False)
        wait_until(_rabbitmq_answers, 90, interval=1, message="RabbitMQ to start")
    vhost = f"scheduler-test-{os.getpid()}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{vhost}"
    rabbitmqctl("delete_vhost", vhost)


def vhost_queues_delete(broker_url: str) -> None:
    """Delete every queue of the URL's vhost (what earlier tests of the session left)."""
    vhost = broker_vhost(broker_url)
    names = rabbitmqctl("list_queues", "-p", vhost, "name", "--no-table-headers").split()
    with Connection(broker_url) as conn:
        for name in names:
            channel = conn.channel()
            try:
                channel.queue_delete(name)
            except conn.channel_errors:
                pass
            finally:
                if channel.is_open:
                    channel.close()
