"""The node agent's supervision: the clean-up of what a previous agent of the node left
running, and the loop that heartbeats the running tokens and applies cancels. Its steps
are called directly; the processes they act on are real."""

import signal
import sys
import time

import pytest
from django.utils import timezone

from jobs.agent import metrics as agent_metrics
from jobs.agent.runner import agent_identity, running
from jobs.agent.sampling import usage_by_group
from jobs.agent.supervision import AgentLoop, reap_orphans
from jobs.models import Job
from jobs.scheduling.cycle import place_pending_jobs
from jobs.services.executions import execution_claim
from jobs.services.failover import execution_fail_over
from nodes.models import Node
from resources.models import DEFAULT_QUEUE_NAME, Queue
from tests.processes import gone, wait_until


@pytest.fixture
def track():
    """Track tokens in the agent's registry as its task threads do; untracked afterwards."""
    entries = []

    def track(token):
        entry = running.track(token)
        assert entry is not None
        entries.append(entry)
        return entry

    yield track
    for entry in entries:
        running.untrack(entry)


# --- Orphans --------------------------------------------------------------------------


def test_reap_orphans_kills_the_process_groups_of_this_nodes_agent_and_no_others(
    groups, settings, tmp_path
):
    settings.NODE_WORK_DIR = tmp_path / "work"
    orphan, orphan_child = groups.start_job_like(agent_identity("node-a"))
    other_node, _ = groups.start_job_like(agent_identity("node-b"))
    # The same node name in another cluster on this host (another work directory).
    other_cluster, _ = groups.start_job_like(f"node-a:{tmp_path / 'elsewhere'}")
    unmarked = groups.start(["sleep", "60"])

    assert reap_orphans("node-a") == 1

    assert orphan.wait(timeout=5) == -signal.SIGKILL
    wait_until(lambda: gone(orphan_child), 5, message="the orphan's child to be killed too")
    for proc in (other_node, other_cluster, unmarked):
        assert proc.poll() is None, proc.args
    assert reap_orphans("node-a") == 0


# --- The agent loop -------------------------------------------------------------------


@pytest.mark.django_db
def test_a_heartbeat_records_the_running_tokens_and_when(track):
    node = Node.objects.create(
        name="node-a", cpu_millis=1000, memory_mb=1024, running_tokens=["job-9-attempt-1"]
    )
    loop = AgentLoop("node-a")
    track("job-2-attempt-1")
    first = track("job-1-attempt-1")
    before = timezone.now()

    loop.heartbeat()

    node.refresh_from_db()
    assert node.running_tokens == ["job-1-attempt-1", "job-2-attempt-1"]
    assert node.last_heartbeat >= before
    beat = node.last_heartbeat

    running.untrack(first)
    loop.heartbeat()
    node.refresh_from_db()
    assert node.running_tokens == ["job-2-attempt-1"]
    assert node.last_heartbeat > beat


# A process that spends `seconds` of CPU time, then exits.
def burn(seconds: float) -> str:
    return (
        f"{sys.executable} -c 'import time\nt = time.process_time()\n"
        f"while time.process_time() - t < {seconds}: pass'"
    )


def test_a_groups_cpu_time_includes_the_children_it_has_waited_for(groups):
    proc = groups.start(["sh", "-c", f"{burn(0.5)}; echo done; sleep 60"])
    assert proc.stdout.readline() == "done\n"
    assert usage_by_group()[proc.pid].cpu_seconds >= 0.45


@pytest.mark.django_db
def test_a_heartbeat_says_what_the_running_jobs_use(groups, track):
    node = Node.objects.create(name="node-a", cpu_millis=2000, memory_mb=1024)
    busy = groups.start(["sh", "-c", "while :; do :; done"])
    holding = groups.start(
        [
            sys.executable,
            "-c",
            "import time; b = bytearray(80 << 20); print(1, flush=True); time.sleep(60)",
        ]
    )
    assert holding.stdout.readline() == "1\n"
    unrelated = groups.start(["sh", "-c", "while :; do :; done"])  # no job of this agent
    for i, proc in enumerate((busy, holding)):
        track(f"job-{i}-attempt-1").started(proc.pid)
    loop = AgentLoop("node-a")
    loop.heartbeat()
    time.sleep(1)
    loop.heartbeat()

    node.refresh_from_db()
    # One busy loop is at most one core; the unrelated one is not counted.
    assert 300 <= node.used_cpu_millis <= 1150, node.used_cpu_millis
    assert 80 <= node.used_memory_mb < 200, node.used_memory_mb
    used = agent_metrics.registry.get_sample_value("scheduler_agent_used", {"resource": "cpu"})
    assert used == pytest.approx(node.used_cpu_millis / 1000, abs=0.001)
    assert agent_metrics.registry.get_sample_value("scheduler_agent_running_executions") == 2
    assert unrelated.poll() is None


@pytest.mark.django_db(transaction=True)
def test_the_agent_loop_heartbeats_until_it_is_stopped(track):
    Node.objects.create(name="node-a", cpu_millis=1000, memory_mb=1024)
    track("job-1-attempt-1")
    loop = AgentLoop("node-a")
    loop.start()
    try:
        wait_until(
            lambda: Node.objects.filter(name="node-a", running_tokens=["job-1-attempt-1"]).exists(),
            5,
            message="a heartbeat from the loop",
        )
    finally:
        loop.stop()
        loop.join(timeout=5)
    assert not loop.is_alive()


@pytest.mark.django_db
def test_cancels_kill_the_tracked_executions_whose_job_asked_and_no_others(team, groups, track):
    node = Node.objects.create(name="node-a", cpu_millis=2000, memory_mb=1024)
    queue = Queue.objects.get(name=DEFAULT_QUEUE_NAME)
    Job.objects.bulk_create(
        [Job(team=team, queue=queue, name="j", command=["true"], memory_mb=100) for _ in range(2)]
    )
    tokens = place_pending_jobs(batch_size=10).tokens
    executions = [execution_claim(token=token, node_id=node.id) for token in tokens]
    cancelled, kept = executions
    Job.objects.filter(pk=cancelled.job.id).update(cancel_requested_at=timezone.now())
    procs, entry = {}, {}
    for execution in executions:
        procs[execution.token] = groups.start(["sleep", "60"])
        entry[execution.token] = track(execution.token)
        entry[execution.token].started(procs[execution.token].pid)

    AgentLoop("node-a").apply_cancels()

    assert procs[cancelled.token].wait(timeout=5) == -signal.SIGTERM
    assert (entry[cancelled.token].kill_reason, entry[cancelled.token].cancelled) == (
        "cancelled",
        True,
    )
    assert procs[kept.token].poll() is None
    assert (entry[kept.token].kill_reason, entry[kept.token].cancelled) == ("", False)


@pytest.mark.django_db
def test_executions_failed_over_are_taken_away_killed_and_marked_not_to_report(team, groups, track):
    node = Node.objects.create(name="node-a", cpu_millis=2000, memory_mb=1024)
    queue = Queue.objects.get(name=DEFAULT_QUEUE_NAME)
    Job.objects.bulk_create(
        [Job(team=team, queue=queue, name="j", command=["true"], memory_mb=100) for _ in range(2)]
    )
    tokens = place_pending_jobs(batch_size=10).tokens
    executions = [execution_claim(token=token, node_id=node.id) for token in tokens]
    lost, kept = executions
    assert execution_fail_over(execution_id=lost.id, reason="node lost")
    procs, entry = {}, {}
    for execution in executions:
        procs[execution.token] = groups.start(["sleep", "60"])
        entry[execution.token] = track(execution.token)
        entry[execution.token].started(procs[execution.token].pid)

    AgentLoop("node-a").apply_cancels()

    assert procs[lost.token].wait(timeout=5) == -signal.SIGTERM
    assert entry[lost.token].taken_away and not entry[lost.token].cancelled
    assert entry[lost.token].kill_reason == "taken away: failed over while the node was unreachable"
    assert procs[kept.token].poll() is None
    assert (entry[kept.token].kill_reason, entry[kept.token].taken_away) == ("", False)
