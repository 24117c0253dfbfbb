"""Fail-over: reconciliation re-sends what no node claimed, once per dispatch timeout, and
a job whose node keeps being lost fails once it is out of node-loss retries."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import Job, JobExecution, JobStatus
from jobs.scheduling.cycle import place_pending_jobs
from jobs.services.executions import execution_claim
from jobs.services.failover import execution_fail_over, execution_republish_stale
from tests.jobs.making import ECHO, submit

pytestmark = pytest.mark.django_db


def test_an_unclaimed_execution_is_sent_again_once_per_timeout(
    api, small_node, broker, django_capture_on_commit_callbacks
):
    # Each pass's messages go out when its transaction (here the test's) commits.
    def republish():
        with django_capture_on_commit_callbacks(execute=True):
            return execution_republish_stale(older_than_seconds=30)

    api.post("/api/jobs/", ECHO, format="json")
    token = place_pending_jobs(batch_size=10).tokens[0]
    queue = f"node.{small_node.name}"
    broker.delete(queue)  # the broker lost the cycle's message
    assert republish() == 0  # not overdue yet

    long_ago = timezone.now() - timedelta(seconds=60)
    JobExecution.objects.filter(token=token).update(reserved_at=long_ago)
    assert republish() == 1
    assert broker.llen(queue) == 1
    # Still unclaimed on the next pass, but sent only just now: not again yet.
    assert republish() == 0
    assert broker.llen(queue) == 1

    JobExecution.objects.filter(token=token).update(republished_at=long_ago)
    assert republish() == 1
    assert broker.llen(queue) == 2


def test_a_claimed_execution_is_never_sent_again(api, small_node, broker):
    api.post("/api/jobs/", ECHO, format="json")
    token = place_pending_jobs(batch_size=10).tokens[0]
    execution_claim(token=token, node_id=small_node.id)
    JobExecution.objects.filter(token=token).update(
        reserved_at=timezone.now() - timedelta(seconds=60)
    )
    assert execution_republish_stale(older_than_seconds=30) == 0


def test_a_job_that_keeps_losing_its_node_fails_after_the_limit(api, small_node, broker, settings):
    settings.NODE_LOST_MAX_RETRIES = 1
    job_id = submit(api)
    for _ in range(2):
        place_pending_jobs(batch_size=10)
        job = Job.objects.get(pk=job_id)
        assert execution_fail_over(execution_id=job.last_execution_id, reason="node lost")
        assert not execution_fail_over(execution_id=job.last_execution_id, reason="node lost")
        Job.objects.filter(pk=job_id).update(not_before=None)
    job = Job.objects.get(pk=job_id)
    assert (job.status, job.attempts) == (JobStatus.FAILED, 2)
    small_node.refresh_from_db()
    assert small_node.allocated_cpu_millis == 0
