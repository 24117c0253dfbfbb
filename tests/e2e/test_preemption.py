"""Preemption with a real scheduler and node agents: a high-priority job stops a
low-priority preemptible one (SIGTERM, the grace, then SIGKILL), starts in its room, and
the victim runs again later, no retry used; a job that is not preemptible is never
touched."""

import pytest

from events.models import Event, EventType
from jobs.models import ExecutionStatus, Job, JobExecution, JobStatus
from resources.models import Queue
from tests.processes import wait_until

pytestmark = pytest.mark.e2e

GRACE_SECONDS = 15


def trapping_job(marker, *, second_run: str) -> list[str]:
    """A shell job that waits long, and on SIGTERM writes `marker` and exits; run again
    with the marker there, it does `second_run` and ends."""
    script = (
        f'if [ -f "{marker}" ]; then {second_run}; fi; '
        f"trap 'echo TERM > \"{marker}\"; exit 0' TERM; "
        "sleep 300 & wait $!"
    )
    return ["sh", "-c", script]


def submit(api, **spec) -> int:
    response = api.post("/api/jobs/", spec, format="json")
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def status(job_id) -> str:
    return Job.objects.get(pk=job_id).status


def test_a_high_priority_job_preempts_a_low_priority_one_which_runs_again_later(
    cluster, api, tmp_path
):
    Queue.objects.create(
        name="scavenger",
        all_teams=True,
        preemptible_default=True,
        preemption_grace_seconds=GRACE_SECONDS,
    )
    cluster.start_node("node-a", cpu=1)
    cluster.start_node("node-b", cpu=1)
    cluster.start_scheduler()
    victim_marker, pinned_marker = tmp_path / "victim-term", tmp_path / "pinned-term"
    pinned = submit(
        api,
        name="pinned",
        command=trapping_job(pinned_marker, second_run="exit 0"),
        queue="scavenger",
        preemptible=False,
        resources={"cpu": 1},
    )
    wait_until(lambda: status(pinned) == JobStatus.RUNNING, 30, message="the pinned job to run")
    victim = submit(
        api,
        name="victim",
        command=trapping_job(victim_marker, second_run='echo "second run"; exit 0'),
        queue="scavenger",
        resources={"cpu": 1},
        max_retries=0,
    )
    wait_until(lambda: status(victim) == JobStatus.RUNNING, 30, message="the victim to run")
    victim_node = Job.objects.get(pk=victim).last_execution.node_id
    assert Job.objects.get(pk=victim).preemptible

    high = submit(
        api,
        name="urgent",
        command=["sleep", "1"],
        resources={"cpu": 1},
        priority=10,
    )
    wait_until(
        lambda: Job.objects.get(pk=high).started_at is not None,
        60,
        message="the high-priority job to start",
    )
    first = JobExecution.objects.get(job_id=victim, attempt=1)
    assert first.status == ExecutionStatus.PREEMPTED
    assert first.preempted_by_id == high
    # Stopped by its SIGTERM trap, within the grace: no SIGKILL was needed.
    assert victim_marker.read_text().strip() == "TERM"
    assert (first.finished_at - first.preempt_requested_at).total_seconds() < GRACE_SECONDS
    assert Job.objects.get(pk=high).last_execution.node_id == victim_node
    event = Event.objects.get(type=EventType.JOB_PREEMPTED, job_id=victim)
    assert f"job {high}" in event.message

    wait_until(lambda: status(high) == JobStatus.SUCCEEDED, 60, message="the urgent job")
    wait_until(lambda: status(victim) == JobStatus.SUCCEEDED, 60, message="the victim's rerun")
    job = Job.objects.get(pk=victim)
    assert (job.attempts, job.preemptions, job.max_retries) == (2, 1, 0)
    assert not job.retries.exists()
    assert "second run" in job.last_execution.log_tail

    # The job that is not preemptible ran on, untouched.
    assert status(pinned) == JobStatus.RUNNING
    assert not pinned_marker.exists()
    assert JobExecution.objects.get(job_id=pinned).preempt_requested_at is None
    api.post(f"/api/jobs/{pinned}/cancel/")
    wait_until(lambda: status(pinned) == JobStatus.CANCELLED, 30, message="the pinned cancel")
