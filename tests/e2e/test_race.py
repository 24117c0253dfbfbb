"""Submitters, two schedulers and small nodes all at once, and the leader killed mid-run.

Everything is a real process: three submitter processes (a fifth of their jobs gangs of
2 or 3 tasks), two `run_scheduler` processes (one leads, one stands by) and three node
agents with little room, while a sampler polls the accounting in SQL. The leader gets
SIGKILL while work is still arriving. A fourth submitter keeps long low-priority
preemptible jobs coming, which the others' high-priority jobs preempt (gangs neither
preempt nor are preempted).
"""

import pytest
from django.db.models import Count

from jobs.models import ExecutionStatus, Job, JobExecution, JobRetry, JobStatus
from nodes.models import Node
from resources.models import Allocation, AllocationStatus, Queue
from tests.accounting import AccountingSampler
from tests.processes import wait_until

pytestmark = pytest.mark.e2e

SUBMITTERS = 3
JOBS_EACH = 30
PREEMPTIBLE_JOBS = 8
QUOTA_BURST = 8  # race-a jobs of 500 m for 2 s, all at once: twice its 2000 m quota


def test_racing_submitters_schedulers_and_nodes_never_oversubscribe_or_lose_a_job(cluster, team):
    Queue.objects.create(name="race-a", all_teams=True, weight=2, quota_cpu_millis=2000)
    Queue.objects.create(name="race-b", all_teams=True)
    Queue.objects.create(
        name="race-low", all_teams=True, preemptible_default=True, preemption_grace_seconds=1
    )
    cluster.start_node("node-a", cpu=2, memory_mb=1024)
    cluster.start_node("node-b", cpu=1.5, memory_mb=512)
    cluster.start_node("node-c", cpu=1, memory_mb=1024)
    first = cluster.start_scheduler("scheduler-1")
    second = cluster.start_scheduler("scheduler-2", wait_leader=False)
    total = SUBMITTERS * JOBS_EACH + PREEMPTIBLE_JOBS + QUOTA_BURST
    sampler = AccountingSampler()
    sampler.start()
    try:
        # Long low-priority preemptible jobs first, so that the high-priority ones find
        # them running.
        preemptible = cluster.start_submitter(
            "preemptible",
            team=team.slug,
            queues=["race-low"],
            count=PREEMPTIBLE_JOBS,
            max_pause=0.5,
            sleep=3,
        )
        wait_until(
            lambda: (
                Job.objects.filter(queue__name="race-low", status=JobStatus.RUNNING).count() >= 2
            ),
            60,
            message="preemptible jobs running",
        )
        # A burst that asks race-a for twice its quota, so the quota is what holds it back.
        burst = cluster.start_submitter(
            "quota-burst",
            team=team.slug,
            queues=["race-a"],
            count=QUOTA_BURST,
            max_pause=0,
            sleep=2,
            cpu_millis=500,
        )
        submitters = [
            cluster.start_submitter(
                f"submitter-{i}",
                team=team.slug,
                queues=["race-a", "race-b", "default"],
                count=JOBS_EACH,
                seed=i,
                max_pause=0.25,
                gang_share=0.2,
                priorities="0,10",
            )
            for i in range(SUBMITTERS)
        ]
        # Kill the leader once it has placed a good share of the work, while more arrives.
        wait_until(
            lambda: Job.objects.exclude(status=JobStatus.PENDING).count() >= total // 3,
            60,
            message="placements under way",
        )
        leader = cluster.leader()
        assert not any(s.popen.poll() is not None for s in submitters), "submitters ended early"
        leader.kill()
        standby = second if leader is first else first
        wait_until(
            lambda: cluster.leader_pid() == standby.popen.pid, 15, message="the standby to lead"
        )
        for submitter in [*submitters, preemptible, burst]:
            assert submitter.popen.wait(timeout=120) == 0, submitter.log()
        wait_until(
            lambda: Job.objects.filter(status=JobStatus.SUCCEEDED).count() == total,
            180,
            interval=0.5,
            message=f"{total} jobs to succeed",
        )
    finally:
        sampler.stop()

    assert sampler.samples > 100
    assert sampler.violations == []  # no node, queue or gang breach in any sample
    assert Job.objects.count() == total
    gangs = Job.objects.filter(tasks__gt=1)
    assert gangs.exists()
    # Nothing lost, nothing placed twice: one execution per task of each job (a gang's
    # tasks each have theirs), and one more per preemption (of preemptible single-task
    # jobs only, each ended `preempted`), one allocation each.
    jobs = Job.objects.annotate(n=Count("executions"))
    assert {(j.preemptible, j.n - j.tasks * (1 + j.preemptions)) for j in jobs} <= {
        (True, 0),
        (False, 0),
    }
    assert not jobs.filter(preemptible=False, preemptions__gt=0).exists()
    assert not gangs.filter(preemptions__gt=0).exists()
    preempted = JobExecution.objects.filter(status=ExecutionStatus.PREEMPTED)
    assert preempted.count() == sum(j.preemptions for j in jobs) >= 1
    assert not preempted.exclude(job__queue__name="race-low").exists()
    assert not JobRetry.objects.exists()  # preemptions use no retry
    assert Allocation.objects.count() == JobExecution.objects.count()
    assert not Allocation.objects.exclude(status=AllocationStatus.RELEASED).exists()
    assert set(
        Node.objects.values_list("allocated_cpu_millis", "allocated_memory_mb", "allocated_gpu")
    ) == {(0, 0, 0)}
    # The quota was reached, so it was what held race-a back (never beyond: see violations).
    assert sampler.max_queue_cpu["race-a"] == 2000
    assert "scheduler is the leader" in standby.log()
    # Nodes placed jobs on the room their successes freed too, racing the schedulers and
    # each other.
    nodes = [p for p in cluster.processes if p.name.startswith("node-")]
    assert sum("took on the room freed by" in p.log() for p in nodes) >= 2
