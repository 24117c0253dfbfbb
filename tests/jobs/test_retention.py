"""Job retention (`jobs.services.retention`, beat's `purge-jobs`): jobs and workflows that
ended before the retention go with everything of theirs; dead letters, jobs that a live
job depends on, and what the metrics have not counted stay; the counters do not move."""

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from jobs.accounting import Success
from jobs.models import (
    Job,
    JobDependency,
    JobExecution,
    JobLogChunk,
    JobStatus,
    Workflow,
    WorkflowStatus,
)
from jobs.services.actions import job_acknowledge, job_requeue
from jobs.services.executions import execution_finish, executions_finish_succeeded
from jobs.services.logs import LogChunk, log_chunks_append
from jobs.services.retention import jobs_purge
from jobs.tasks import purge_jobs
from nodes.models import Node
from resources.models import Allocation
from scheduler_site.exceptions import exception_handler
from tests.conftest import token_client
from tests.jobs.making import start_running, submit
from tests.jobs.metrics_world import assert_counters_kept, build_world, scrape

pytestmark = pytest.mark.django_db

LONG_AGO = timedelta(days=100)


@pytest.fixture
def node(db):
    return Node.objects.create(name="big", cpu_millis=64000, memory_mb=65536)


def run(node, outcomes: dict[int, str]) -> None:
    """Place and start what is pending, then end each job as `outcomes` says (`ok`, or
    `fail`: exit code 1, no retries left; one it does not name runs on); each attempt
    prints a line first."""
    tokens = start_running(node)
    for job_id, token in tokens.items():
        execution = JobExecution.objects.get(token=token)
        chunk = LogChunk(execution.id, 0, 1, 0, f"output of {job_id}\n")
        log_chunks_append(chunks=[chunk], cuts={})
        if job_id not in outcomes:
            continue
        if outcomes[job_id] == "ok":
            executions_finish_succeeded([Success(token)], wake=False)
        else:
            execution_finish(token=token, exit_code=1, error="exit code 1")


def ended_long_ago(*job_ids: int) -> None:
    Job.objects.filter(id__in=job_ids).update(finished_at=timezone.now() - LONG_AGO)


def remaining(*job_ids: int) -> set[int]:
    return set(Job.objects.filter(id__in=job_ids).values_list("id", flat=True))


def test_what_ended_before_the_retention_goes_with_its_attempts_logs_and_allocations(
    api, member, node
):
    done, failed, dead_letter, recent = (submit(api) for _ in range(4))
    cancelled = submit(api, hold=True)
    run(node, {done: "ok", failed: "fail", dead_letter: "fail", recent: "ok"})
    api.post(f"/api/jobs/{cancelled}/cancel/")
    job_acknowledge(job=Job.objects.get(pk=failed), user=member)
    ended_long_ago(done, failed, dead_letter, cancelled)
    executions = list(
        JobExecution.objects.filter(job_id__in=[done, failed]).values_list("id", flat=True)
    )
    assert len(executions) == 2

    # In batches of two: the kept dead letter's batch goes on to the next.
    purged = jobs_purge(before=timezone.now() - timedelta(days=90), batch=2)

    assert (purged.jobs, purged.workflows) == (3, 0)
    assert remaining(done, failed, dead_letter, recent, cancelled) == {dead_letter, recent}
    assert not JobExecution.objects.filter(id__in=executions).exists()
    assert not Allocation.objects.filter(execution_id__in=executions).exists()
    assert not JobLogChunk.objects.filter(execution_id__in=executions).exists()
    assert api.get(f"/api/jobs/{done}/").status_code == 404
    # The dead letter stays until someone acknowledges it; then it goes too.
    assert Job.objects.get(pk=dead_letter).is_dead_letter
    job_acknowledge(job=Job.objects.get(pk=dead_letter), user=member)
    ended_long_ago(dead_letter)
    assert jobs_purge(before=timezone.now() - timedelta(days=90)).jobs == 1
    assert remaining(dead_letter) == set()


def test_an_upstream_stays_while_a_job_that_depends_on_it_has_not_ended(api, node):
    upstream = submit(api)
    run(node, {upstream: "ok"})
    downstream = submit(
        api, depends_on=[{"job": upstream, "on": "succeeded"}, {"job": submit(api, hold=True)}]
    )
    ended_long_ago(upstream)
    assert jobs_purge(before=timezone.now() - timedelta(days=1)).jobs == 0
    assert JobDependency.objects.filter(job_id=downstream, upstream_id=upstream).exists()
    Job.objects.filter(pk=downstream).update(
        status=JobStatus.CANCELLED, pending_reason="", finished_at=timezone.now()
    )
    assert jobs_purge(before=timezone.now() - timedelta(days=1)).jobs == 1
    assert remaining(upstream, downstream) == {downstream}


def test_an_array_goes_with_its_tasks_and_stays_while_one_is_a_dead_letter(api, member, node):
    array = submit(api, array={"count": 3})
    tasks = list(Job.objects.filter(array_parent_id=array).values_list("id", flat=True))
    run(node, {tasks[0]: "ok", tasks[1]: "ok", tasks[2]: "fail"})
    assert Job.objects.get(pk=array).status == JobStatus.FAILED
    ended_long_ago(array, *tasks)
    before = timezone.now() - timedelta(days=1)
    assert jobs_purge(before=before).jobs == 0  # the array and its task are dead letters
    job_acknowledge(job=Job.objects.get(pk=array), user=member)
    assert jobs_purge(before=before).jobs == 0  # the task still is
    assert remaining(array, *tasks) == {array, *tasks}
    job_acknowledge(job=Job.objects.get(pk=tasks[2]), user=member)
    assert jobs_purge(before=before).jobs == 1
    assert remaining(array, *tasks) == set()


def test_an_ended_workflow_goes_with_its_jobs_and_a_running_one_stays(api, node):
    steps = [
        {"name": "a", "job": {"command": ["true"]}},
        {"name": "b", "job": {"command": ["true"]}, "depends_on": ["a"]},
    ]
    ended, running = (
        api.post("/api/workflows/", {"name": "w", "steps": steps}, format="json").json()["id"]
        for _ in range(2)
    )
    first_steps = list(
        Job.objects.filter(workflow_id__in=[ended, running], workflow_step__name="a")
    )
    run(node, {job.id: "ok" for job in first_steps})
    (second,) = Job.objects.filter(workflow_id=ended, workflow_step__name="b")
    run(node, {second.id: "ok"})
    assert Workflow.objects.get(pk=ended).status == WorkflowStatus.SUCCEEDED
    jobs = list(Job.objects.filter(workflow_id__in=[ended, running]).values_list("id", flat=True))
    Job.objects.filter(id__in=jobs).exclude(finished_at=None).update(
        finished_at=timezone.now() - LONG_AGO
    )
    Workflow.objects.filter(pk=ended).update(finished_at=timezone.now() - LONG_AGO)

    purged = jobs_purge(before=timezone.now() - timedelta(days=1), batch=1)

    assert (purged.jobs, purged.workflows) == (0, 1)
    assert set(Workflow.objects.values_list("id", flat=True)) == {running}
    assert set(Job.objects.filter(id__in=jobs).values_list("workflow_id", flat=True)) == {running}


def test_the_counters_do_not_move_when_what_they_counted_goes(team, default_queue):
    build_world(team, default_queue)  # nothing folded yet: the purge folds first
    before = scrape()
    ended = Job.objects.filter(status__in=["succeeded", "failed", "cancelled"])
    ended.update(finished_at=timezone.now() - LONG_AGO)
    assert jobs_purge(before=timezone.now() - timedelta(days=1)).jobs > 0
    assert_counters_kept(before, scrape())


def test_beat_purges_past_the_retention_setting_and_zero_keeps_every_job(api, node, settings):
    job_id = submit(api)
    run(node, {job_id: "ok"})
    Job.objects.filter(pk=job_id).update(finished_at=timezone.now() - timedelta(days=10))
    settings.JOB_RETENTION_DAYS = 0
    assert purge_jobs() == {"jobs": 0, "workflows": 0}
    settings.JOB_RETENTION_DAYS = 30
    assert purge_jobs() == {"jobs": 0, "workflows": 0}
    settings.JOB_RETENTION_DAYS = 7
    settings.JOB_PURGE_BUDGET_SECONDS = 0  # a run out of time leaves it to the next
    assert purge_jobs() == {"jobs": 0, "workflows": 0}
    settings.JOB_PURGE_BUDGET_SECONDS = 60
    assert purge_jobs() == {"jobs": 1, "workflows": 0}
    assert remaining(job_id) == set()


@pytest.mark.django_db(transaction=True)
def test_a_job_locked_by_a_requeue_is_skipped_not_waited_for_and_a_vanished_one_is_a_404(
    team, default_queue, member, node
):
    api = token_client(member)
    job_id = submit(api, hold=True)
    api.post(f"/api/jobs/{job_id}/cancel/")
    ended_long_ago(job_id)
    locked, purged = threading.Event(), threading.Event()

    def requeue():
        # As job_requeue does: the job's row locked, then the purge runs, then the
        # requeue commits.
        with transaction.atomic():
            job = Job.objects.select_for_update().get(pk=job_id)
            locked.set()
            assert purged.wait(10)
            job_requeue(job=job, user=member)
        connection.close()

    thread = threading.Thread(target=requeue)
    thread.start()
    assert locked.wait(10)
    started = time.monotonic()
    assert jobs_purge(before=timezone.now() - timedelta(days=1)).jobs == 0
    assert time.monotonic() - started < 5
    purged.set()
    thread.join(10)
    assert Job.objects.get(pk=job_id).status == JobStatus.PENDING
    assert jobs_purge(before=timezone.now() - timedelta(days=1)).jobs == 0
    # A request whose job goes between its read and its lock answers 404, not 500.
    gone = Job.objects.get(pk=job_id)
    Job.objects.filter(pk=job_id).delete()
    response = exception_handler(Job.DoesNotExist(), {})
    assert (response.status_code, response.data) == (404, {"detail": "Not found."})
    with pytest.raises(Job.DoesNotExist):
        job_requeue(job=gone, user=member)
