"""Execution on a real node agent: duplicates, timeouts, CPU time limits, retries,
environment.

The tests share one platform (a node agent, the scheduler and the web server its agent
reaches), each with a team of its own (`team_api`), and leave its node empty."""

import itertools
import re
import time
import uuid

import pytest
from django.conf import settings

from jobs.models import Job, JobExecution, JobStatus
from resources.models import AllocationStatus
from resources.routing import EXECUTION_TASK
from scheduler_site.celery import app as celery_app
from tests.processes import processes_matching, shared_cluster, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def platform_cluster(django_db_setup, django_db_blocker, tmp_path_factory):
    with shared_cluster(django_db_blocker, tmp_path_factory.mktemp("execution")) as cluster:
        # The log test's cap on what an attempt ships; the others print far less.
        cluster.env["JOB_LOG_SHIP_MAX_BYTES"] = "1048576"
        cluster.start_node("node-a", cpu=2, memory_mb=1024, gpu=2, slots=4)
        cluster.start_scheduler()
        yield cluster


def submit(api, **payload):
    response = api.post("/api/jobs/", {"name": "t", **payload}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def wait_finished(job_id, timeout=30):
    return wait_until(
        lambda: (
            (job := Job.objects.get(pk=job_id)).status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
            and job
        ),
        timeout,
        message=f"job {job_id} to finish",
    )


def test_the_same_execution_message_delivered_three_times_runs_once(
    platform_cluster, team_api, tmp_path
):
    node = platform_cluster.process("node-a")
    marker = tmp_path / "runs.txt"
    job_id = submit(team_api, command=["sh", "-c", f"echo run >> {marker}; sleep 1"])
    execution = wait_until(
        lambda: JobExecution.objects.filter(job_id=job_id).first(), 10, message="placement"
    )
    # Two more copies, straight to the node's queue, while the first may be running.
    for _ in range(2):
        celery_app.send_task(EXECUTION_TASK, kwargs={"token": execution.token}, queue="node.node-a")
    job = wait_finished(job_id)
    assert job.status == JobStatus.SUCCEEDED
    # And one more after it finished: a stale token does nothing.
    celery_app.send_task(EXECUTION_TASK, kwargs={"token": execution.token}, queue="node.node-a")

    def dropped():
        return sum(
            "dropped duplicate" in line and f"token={execution.token} " in line
            for line in node.log().splitlines()
        )

    wait_until(lambda: dropped() == 3, 10, message="three dropped duplicates")
    assert marker.read_text() == "run\n"
    assert JobExecution.objects.filter(job_id=job_id).count() == 1


def test_a_job_past_its_timeout_fails_and_leaves_no_process(team_api):
    marker = f"timeout-marker-{uuid.uuid4().hex[:8]}"
    # A child in the background and one in the foreground: both must go.
    job_id = submit(
        team_api,
        command=["sh", "-c", f"sh -c 'sleep 300; echo {marker}' & sleep 301 # {marker}"],
        timeout_seconds=1,
    )
    wait_until(lambda: processes_matching(marker), 15, message="the job to start")
    job = wait_finished(job_id)
    execution = job.last_execution
    assert job.status == JobStatus.FAILED
    assert execution.error == "timed out after 1 s"
    assert execution.allocation.status == AllocationStatus.RELEASED
    wait_until(lambda: not processes_matching(marker), 5, message="no process left behind")


def test_a_job_past_its_cpu_time_limit_fails_saying_so_and_one_asleep_does_not(team_api):
    busy = submit(
        team_api,
        command=["python3", "-c", "while True: pass"],
        cpu_time_limit_seconds=1,
        timeout_seconds=30,
    )
    asleep = submit(team_api, command=["sleep", "2"], cpu_time_limit_seconds=1)
    job = wait_finished(busy)
    assert job.status == JobStatus.FAILED
    assert job.last_execution.error == "exceeded its CPU time limit of 1 s"
    assert job.last_execution.allocation.status == AllocationStatus.RELEASED
    assert wait_finished(asleep).status == JobStatus.SUCCEEDED


def test_a_failing_job_is_retried_then_fails_with_every_attempt_recorded(team_api):
    job_id = submit(
        team_api,
        command=["sh", "-c", "echo attempt $JOB_ATTEMPT; exit 2"],
        max_retries=2,
        retry_backoff_seconds=0,
    )
    job = wait_finished(job_id)
    assert job.status == JobStatus.FAILED
    assert job.attempts == 3
    attempts = list(JobExecution.objects.filter(job_id=job_id).order_by("attempt"))
    assert [(e.attempt, e.status, e.exit_code) for e in attempts] == [
        (1, "failed", 2),
        (2, "failed", 2),
        (3, "failed", 2),
    ]
    assert [e.log_tail for e in attempts] == ["attempt 1\n", "attempt 2\n", "attempt 3\n"]


def test_the_job_sees_its_environment_but_not_the_agents_secrets(team_api):
    job_id = submit(
        team_api,
        command=["sh", "-c", "env | sort; pwd"],
        env={"GREETING": "hi there"},
        resources={"cpu": 1.5, "memory_mb": 300},
    )
    job = wait_finished(job_id)
    assert job.status == JobStatus.SUCCEEDED
    output = job.last_execution.log_tail
    for line in [
        "GREETING=hi there",
        f"JOB_ID={job_id}",
        "JOB_ATTEMPT=1",
        "NODE_NAME=node-a",
        "JOB_CPU_MILLIS=1500",
        "JOB_MEMORY_MB=300",
        "JOB_GPU=0",
    ]:
        assert line in output.splitlines()
    assert "DATABASE_URL" not in output
    assert "SECRET_KEY" not in output
    assert f"/node-a/job-{job_id}-attempt-1" in output


def test_the_agent_runs_each_job_in_a_cgroup_of_its_own(platform_cluster, team_api):
    said = platform_cluster.process("node-a").log()
    if "no job cgroups" in said:
        pytest.skip(f"this host gives the agent no job cgroups: {said}")
    assert "node node-a: each job in a cgroup of its own under cgroup v" in said
    job_id = submit(team_api, command=["cat", "/proc/self/cgroup"], resources={"cpu": 0.5})
    job = wait_finished(job_id)
    assert job.status == JobStatus.SUCCEEDED
    groups = dict(line.split(":", 2)[1:] for line in job.last_execution.log_tail.splitlines())
    own = re.compile(r"/scheduler-node-a-[0-9a-f]{8}/slot-[0-9]+$")
    # cgroup v2: the one hierarchy; v1: the memory and cpu ones (cpu may share its mount),
    # and the pids one where the agent limits a job's processes.
    held = [name for name, path in groups.items() if own.search(path)]
    v1 = {"memory", "cpu", "pids"} if "processes a job" in said else {"memory", "cpu"}
    assert held == [""] or v1 <= {c for name in held for c in name.split(",")}


def test_two_gpu_jobs_at_once_each_see_a_device_of_their_own(team_api, tmp_path):
    # node-a offers 2 GPUs (it has none: what a job sees is the agent's assignment). Each
    # job waits for the other to start, so both hold their device at once.
    barrier = (
        f"touch {tmp_path}/$JOB_ID; until [ $(ls {tmp_path} | wc -l) -ge 2 ]; do sleep 0.05; done"
    )
    show = 'echo "$CUDA_VISIBLE_DEVICES $JOB_GPU_IDS"'
    job_ids = [
        submit(
            team_api,
            command=["sh", "-c", f"{barrier}; {show}"],
            resources={"cpu": 0.5, "gpu": 1},
            timeout_seconds=30,
        )
        for _ in range(2)
    ]
    jobs = [wait_finished(job_id) for job_id in job_ids]
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * 2
    seen = sorted(job.last_execution.log_tail for job in jobs)
    assert seen == ["0 0\n", "1 1\n"]
    # Each attempt records the device it ran on (reported with its success), as the API
    # shows it; a failure reports its devices too.
    for job in jobs:
        device = int(job.last_execution.log_tail.split()[0])
        assert job.last_execution.gpu_ids == [device]
        attempts = team_api.get(f"/api/jobs/{job.id}/executions/").json()
        assert [a["gpu_ids"] for a in attempts] == [[device]]
    failed = wait_finished(
        submit(
            team_api,
            command=["sh", "-c", "exit 3"],
            resources={"cpu": 0.5, "gpu": 2},
            timeout_seconds=30,
        )
    )
    assert (failed.status, failed.last_execution.gpu_ids) == (JobStatus.FAILED, [0, 1])


def test_holds_racing_the_scheduler_and_finishes_run_no_held_job_and_lose_none(team_api):
    # 40 short jobs, more than node-a's room: the scheduler places some, the agent's
    # finishes place more on the room they free (in the web server), and the holds race
    # both, newest first. A hold either wins (the job is not placed until released) or
    # finds the job placed already.
    job_ids = [
        submit(team_api, command=["sleep", "0.2"], resources={"cpu": 0.25, "memory_mb": 16})
        for _ in range(40)
    ]
    held, too_late = [], []
    for job_id in reversed(job_ids):
        response = team_api.post(f"/api/jobs/{job_id}/hold/")
        if response.status_code == 200:
            held.append(job_id)
        else:
            assert response.json()["status"][0].startswith("Only a pending job can be held")
            too_late.append(job_id)
    assert held, "every job was placed before its hold: no race"
    wait_until(
        lambda: (
            Job.objects.filter(id__in=too_late, status=JobStatus.SUCCEEDED).count() == len(too_late)
        ),
        30,
        message="the jobs placed before their holds",
    )
    assert not JobExecution.objects.filter(job_id__in=held).exists()
    assert set(Job.objects.filter(id__in=held).values_list("pending_reason", flat=True)) == {"held"}
    for job_id in held:
        assert team_api.post(f"/api/jobs/{job_id}/release/").status_code == 200
    wait_until(
        lambda: Job.objects.filter(id__in=job_ids, status=JobStatus.SUCCEEDED).count() == 40,
        60,
        message="all 40 jobs to succeed",
    )
    assert JobExecution.objects.filter(job_id__in=job_ids).count() == 40  # each ran once


def running_array(team_api, *, count: int, parallelism: int, started: int) -> int:
    """An array of short tasks (0.25 CPU, 16 MB), once `started` of them have run."""
    array_id = submit(
        team_api,
        command=["sleep", "0.2"],
        resources={"cpu": 0.25, "memory_mb": 16},
        array={"count": count, "parallelism": parallelism},
    )
    wait_until(
        lambda: JobExecution.objects.filter(job__array_parent_id=array_id).count() >= started,
        30,
        message="a few tasks to run",
    )
    return array_id


def test_an_array_held_while_it_runs_starts_no_task_until_released_and_keeps_parallelism(
    team_api,
):
    # 24 short tasks, 4 at once, on a real agent whose finishes release the next tasks
    # for their slots (in the web server). Held while they run, the array gets no task
    # started once what was running or placed has ended; released, it runs the rest, at
    # most 4 at once, each task once.
    array_id = running_array(team_api, count=24, parallelism=4, started=6)
    assert team_api.post(f"/api/jobs/{array_id}/hold/").status_code == 200
    tasks = Job.objects.filter(array_parent_id=array_id)
    live = [JobStatus.RESERVED, JobStatus.RUNNING]
    wait_until(lambda: not tasks.filter(status__in=live).exists(), 30, message="quiet")
    started = JobExecution.objects.filter(job__array_parent_id=array_id).count()
    time.sleep(1.5)  # several finishes' worth: none releases a task now
    assert JobExecution.objects.filter(job__array_parent_id=array_id).count() == started < 24
    assert set(tasks.values_list("status", flat=True)) <= {JobStatus.SUCCEEDED, JobStatus.PENDING}

    assert team_api.post(f"/api/jobs/{array_id}/release/").status_code == 200
    wait_finished(array_id, timeout=60)
    executions = list(JobExecution.objects.filter(job__array_parent_id=array_id))
    assert len(executions) == 24 and {e.job_id for e in executions} == set(
        tasks.values_list("id", flat=True)
    )
    assert Job.objects.get(pk=array_id).status == JobStatus.SUCCEEDED
    moments = sorted(
        [(e.started_at, 1) for e in executions] + [(e.finished_at, -1) for e in executions]
    )
    running = list(itertools.accumulate(step for _, step in moments))
    assert max(running) <= 4


def test_changes_racing_the_scheduler_and_finishes_are_placed_as_changed_or_refused(team_api):
    # As the holds above: each change either wins (the job is placed with what it asks
    # now) or finds the job placed already with what it asked before; no allocation is
    # made for a request the job no longer has.
    job_ids = [
        submit(team_api, command=["sleep", "0.2"], resources={"cpu": 0.25, "memory_mb": 16})
        for _ in range(40)
    ]
    changed, too_late = [], []
    for job_id in reversed(job_ids):
        response = team_api.patch(
            f"/api/jobs/{job_id}/", {"resources": {"memory_mb": 17}}, format="json"
        )
        if response.status_code == 200:
            changed.append(job_id)
        else:
            assert response.json()["status"][0].startswith("Only a pending job can be changed")
            too_late.append(job_id)
    assert changed and too_late, f"no race: {len(changed)} changed, {len(too_late)} too late"
    wait_until(
        lambda: Job.objects.filter(id__in=job_ids, status=JobStatus.SUCCEEDED).count() == 40,
        60,
        message="all 40 jobs to succeed",
    )
    executions = JobExecution.objects.filter(job_id__in=job_ids).select_related("allocation")
    assert len(executions) == 40  # each ran once
    asked = {job_id: 17 if job_id in changed else 16 for job_id in job_ids}
    assert {e.job_id: e.allocation.memory_mb for e in executions} == asked


def test_an_array_changed_while_it_runs_places_each_task_with_what_it_asks(team_api):
    # As the changes above, for a whole array: its tasks that had not started when the
    # change committed run with the new request, the others with the old; none is
    # placed with a request it no longer has.
    array_id = running_array(team_api, count=30, parallelism=6, started=8)
    response = team_api.patch(
        f"/api/jobs/{array_id}/", {"resources": {"memory_mb": 17}}, format="json"
    )
    assert response.status_code == 200
    wait_finished(array_id, timeout=60)
    executions = JobExecution.objects.filter(job__array_parent_id=array_id).select_related(
        "job", "allocation"
    )
    asked = {e.job_id: (e.job.memory_mb, e.allocation.memory_mb) for e in executions}
    assert len(asked) == 30 and all(job == placed for job, placed in asked.values())
    changed = sum(job == 17 for job, _ in asked.values())
    assert 0 < changed < 30, changed


def test_a_job_past_its_memory_limit_fails_with_the_memory_reason(team_api):
    job_id = submit(
        team_api,
        command=["python3", "-c", "import time; x = bytearray(300 * 2**20); time.sleep(30)"],
        resources={"cpu": 1, "memory_mb": 100},
    )
    job = wait_finished(job_id)
    assert job.status == JobStatus.FAILED
    assert job.last_execution.error == "exceeded memory limit of 100 MB"
    assert job.last_execution.allocation.status == AllocationStatus.RELEASED


def test_cancelling_a_running_job_kills_it_and_frees_its_allocation(team_api):
    marker = f"cancel-marker-{uuid.uuid4().hex[:8]}"
    job_id = submit(team_api, command=["sh", "-c", f"sleep 300 # {marker}"])
    wait_until(lambda: processes_matching(marker), 15, message="the job to start")
    response = team_api.post(f"/api/jobs/{job_id}/cancel/")
    assert response.status_code == 200
    assert response.json()["cancel_requested_at"] is not None
    # Well before the agent's periodic check: the cancel's nudge tells it at once.
    assert settings.NODE_CANCEL_POLL_SECONDS >= 30
    wait_until(
        lambda: Job.objects.get(pk=job_id).status == JobStatus.CANCELLED,
        5,
        message="the job to be cancelled",
    )
    execution = JobExecution.objects.get(job_id=job_id)
    assert execution.status == "cancelled"
    assert execution.allocation.status == AllocationStatus.RELEASED
    assert execution.node.allocated_cpu_millis == 0
    wait_until(lambda: not processes_matching(marker), 5, message="no process left behind")


def test_an_always_failing_job_backs_off_then_sits_in_the_dead_letter_view(team_api, tmp_path):
    ok = tmp_path / "ok"
    job_id = submit(
        team_api,
        command=["sh", "-c", f"test -f {ok} || exit 1"],
        max_retries=2,
        retry_backoff_seconds=3,
    )
    job = wait_finished(job_id, timeout=60)
    assert job.status == JobStatus.FAILED and job.attempts == 3
    runs = list(JobExecution.objects.filter(job_id=job_id).order_by("attempt"))
    gaps = [(b.started_at - a.finished_at).total_seconds() for a, b in itertools.pairwise(runs)]
    # Back-off of 3 s, then 6 s, each with +-20% jitter.
    assert 2.4 <= gaps[0] < gaps[1], gaps
    assert gaps[1] >= 4.8, gaps
    retries = team_api.get(f"/api/jobs/{job_id}/").json()["retries"]
    assert [(r["attempt"], r["reason"]) for r in retries] == [
        (2, "exit code 1"),
        (3, "exit code 1"),
    ]
    dead = team_api.get("/api/jobs/", {"dead_letter": "true"}).json()
    assert [j["id"] for j in dead["results"]] == [job_id]

    ok.touch()
    response = team_api.post(f"/api/jobs/{job_id}/retry/")
    assert response.status_code == 200
    assert response.json()["status"] == "pending"
    job = wait_finished(job_id)
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 4
    assert len(team_api.get("/api/jobs/", {"dead_letter": "true"}).json()["results"]) == 0


def test_a_callable_job_runs_with_its_parameters(team_api):
    response = team_api.post(
        "/api/jobs/",
        {
            "name": "echo",
            "kind": "callable",
            "callable": "jobs.callables.echo_parameters",
            "parameters": {"day": "2026-11-23", "rows": 3},
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    job = wait_finished(response.json()["id"])
    assert job.status == JobStatus.SUCCEEDED
    assert job.last_execution.log_tail == '{"day": "2026-11-23", "rows": 3}\n'


def test_a_jobs_log_is_served_capped_with_its_tail_kept(team_api):
    # About 2 MB of output against a 1 MB cap, then a last line.
    job_id = submit(
        team_api,
        command=["sh", "-c", "yes 0123456789abcdef | head -c 2000000; echo; echo the end"],
    )
    job = wait_finished(job_id)
    assert job.status == JobStatus.SUCCEEDED
    assert job.last_execution.log_tail.endswith("0123456789abcdef\n0\nthe end\n")
    response = team_api.get(f"/api/jobs/{job_id}/logs/", {"attempt": 1})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    body = b"".join(response.streaming_content).decode()
    # What the database kept is the tail, after a line saying what went before it.
    marker, _, tail = body.partition("]\n")
    lines, size = re.fullmatch(
        r"\[log cut: (\d+) lines \((\d+) bytes\) dropped to keep the attempt under its cap",
        marker,
    ).groups()
    assert int(size) == 17 * int(lines)
    assert int(size) + len(tail) == 2_000_000 + 9
    assert len(tail) <= 2 * 1_048_576
    assert tail.startswith("0123456789abcdef\n") and tail.endswith("\n0\nthe end\n")
    assert team_api.get(f"/api/jobs/{job_id}/logs/", {"attempt": 2}).status_code == 404
