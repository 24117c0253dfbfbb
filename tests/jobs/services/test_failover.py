"""Reconciliation re-sends what no node claimed, once per dispatch timeout."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import JobExecution
from jobs.services import execution_republish_stale
from resources.cycle import place_pending_jobs

pytestmark = pytest.mark.django_db

ECHO = {"name": "hello", "command": ["echo", "hello"]}


def test_an_unclaimed_execution_is_sent_again_once_per_timeout(api, small_node, broker):
    api.post("/api/jobs/", ECHO, format="json")
    token = place_pending_jobs(batch_size=10).tokens[0]
    queue = f"node.{small_node.name}"
    broker.delete(queue)  # the broker lost the cycle's message
    assert execution_republish_stale(older_than_seconds=30) == 0  # not overdue yet

    long_ago = timezone.now() - timedelta(seconds=60)
    JobExecution.objects.filter(token=token).update(reserved_at=long_ago)
    assert execution_republish_stale(older_than_seconds=30) == 1
    assert broker.llen(queue) == 1
    # Still unclaimed on the next pass, but sent only just now: not again yet.
    assert execution_republish_stale(older_than_seconds=30) == 0
    assert broker.llen(queue) == 1

    JobExecution.objects.filter(token=token).update(republished_at=long_ago)
    assert execution_republish_stale(older_than_seconds=30) == 1
    assert broker.llen(queue) == 2


def test_a_claimed_execution_is_never_sent_again(api, small_node, broker):
    from jobs.services import execution_claim

    api.post("/api/jobs/", ECHO, format="json")
    token = place_pending_jobs(batch_size=10).tokens[0]
    execution_claim(token=token, node_id=small_node.id)
    JobExecution.objects.filter(token=token).update(
        reserved_at=timezone.now() - timedelta(seconds=60)
    )
    assert execution_republish_stale(older_than_seconds=30) == 0
