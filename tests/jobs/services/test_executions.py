"""An execution's life on its node through the services: claimed, then finished, with
successes ended together in one statement."""

import pytest
from django.utils import timezone

from jobs.accounting import Success
from jobs.models import ExecutionStatus, Job, JobStatus
from jobs.scheduling.cycle import place_pending_jobs
from jobs.services.executions import execution_claim, execution_finish, executions_finish_succeeded
from resources.models import AllocationStatus
from tests.jobs.making import submit

pytestmark = pytest.mark.django_db


def test_successes_reported_together_end_only_what_they_may(api, small_node, broker):
    # Four running jobs of 1 CPU each on one node; the fourth has a cancel pending.
    ids = [submit(api, resources={"cpu": 1, "memory_mb": 100}) for _ in range(4)]
    tokens = place_pending_jobs(batch_size=10).tokens
    for token in tokens:
        execution_claim(token=token, node_id=small_node.id)
    Job.objects.filter(pk=ids[3]).update(cancel_requested_at=timezone.now())
    by_job = {Job.objects.get(last_execution__token=t).id: t for t in tokens}

    reports = [Success(token=by_job[i], log_tail=f"out {i}") for i in ids]
    reports.append(Success(token=by_job[ids[0]]))  # the same success, twice in one batch
    ended = executions_finish_succeeded(reports)

    assert ended == {by_job[i]: i for i in ids[:3]}
    for i in ids[:3]:
        job = Job.objects.get(pk=i)
        assert (job.status, job.last_execution.status) == ("succeeded", "succeeded")
        assert job.last_execution.log_tail == f"out {i}"
        assert job.last_execution.allocation.status == AllocationStatus.RELEASED
    small_node.refresh_from_db()
    assert (small_node.allocated_cpu_millis, small_node.allocated_memory_mb) == (1000, 100)
    # Reported again, nothing changes; the cancelled one is for the general path.
    assert executions_finish_succeeded(reports) == {}
    assert execution_finish(token=by_job[ids[3]], exit_code=0) == ExecutionStatus.CANCELLED
    assert Job.objects.get(pk=ids[3]).status == JobStatus.CANCELLED
    small_node.refresh_from_db()
    assert small_node.allocated_cpu_millis == 0
