"""An execution's message never leaves before the transaction that reserved it commits,
and neither does the nudge that tells a node to look at what it should stop."""

import base64
import json

import pytest
from celery import current_app
from django.db import transaction

from jobs.models import Job
from jobs.scheduling.cycle import place_pending_jobs
from jobs.services.actions import job_cancel
from jobs.services.executions import execution_claim
from jobs.services.publishing import executions_publish_on_commit
from nodes.models import Node
from resources.models import DEFAULT_QUEUE_NAME, Queue
from resources.routing import EXECUTION_TASK

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def placed_token(team):
    Node.objects.create(name="pub", cpu_millis=1000, memory_mb=1024)
    queue = Queue.objects.get(name=DEFAULT_QUEUE_NAME)
    Job.objects.create(team=team, name="j", command=["true"], cpu_millis=500, queue=queue)
    (token,) = place_pending_jobs(batch_size=10).tokens
    return token


def test_a_publish_inside_a_transaction_waits_for_its_commit(placed_token, broker):
    with transaction.atomic():
        executions_publish_on_commit(tokens=[placed_token])
        assert broker.llen("node.pub") == 0  # not while the transaction is open
    assert broker.llen("node.pub") == 1


def test_a_publish_inside_a_transaction_that_rolls_back_sends_nothing(placed_token, broker):
    with pytest.raises(RuntimeError), transaction.atomic():
        executions_publish_on_commit(tokens=[placed_token])
        raise RuntimeError("the placement is undone")
    assert broker.llen("node.pub") == 0


def test_a_publish_outside_a_transaction_is_sent_at_once(placed_token, broker):
    executions_publish_on_commit(tokens=[placed_token])
    assert broker.llen("node.pub") == 1


def test_cancelling_a_running_job_nudges_its_node_once_the_cancel_commits(placed_token, broker):
    node = Node.objects.get(name="pub")
    execution = execution_claim(token=placed_token, node_id=node.pk)
    with transaction.atomic():
        job_cancel(job=execution.job)
        assert broker.llen("node.pub.stops") == 0  # not while the transaction is open
    assert broker.llen("node.pub.stops") == 1
    assert broker.llen("node.pub") == 0  # a nudge, no execution message


def test_cancelling_a_job_not_started_nudges_no_node(placed_token, broker):
    job_cancel(job=Job.objects.get())  # reserved, unclaimed: cancelled at once
    assert Job.objects.get().status == "cancelled"
    assert broker.llen("node.pub.stops") == 0


def test_a_cycle_sends_the_message_send_task_would_send(placed_token, broker):
    """The publisher builds its messages itself, for speed: the same headers, body and
    properties as Celery's own `send_task`, but for the task id, and no `reply_to`
    (send_task names its process for results; nobody waits for an execution's)."""
    executions_publish_on_commit(tokens=[placed_token])
    current_app.send_task(EXECUTION_TASK, kwargs={"token": placed_token})
    ours, celerys = (json.loads(broker.rpop("node.pub")) for _ in range(2))  # oldest first
    assert broker.llen("node.pub") == 0

    def comparable(message):
        headers = {k: v for k, v in message["headers"].items() if k not in ("id", "root_id")}
        properties = message["properties"]
        properties = {
            k: v
            for k, v in properties.items()
            if k not in ("correlation_id", "delivery_tag", "reply_to")
        }
        body = json.loads(base64.b64decode(message["body"]))
        return headers, properties, body, message["content-type"]

    assert comparable(ours) == comparable(celerys)
    assert ours["headers"]["kwargsrepr"] == f"{{'token': '{placed_token}'}}"
    assert ours["headers"]["id"] == ours["headers"]["root_id"] != celerys["headers"]["id"]
