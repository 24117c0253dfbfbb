"""Checks of the resource accounting, sampled from SQL while real processes run.

AccountingSampler polls, on a connection of its own, every node's counters and the live
allocations behind them, what each queue's jobs hold, and the gangs' executions, and
records any moment where a node held more than its capacity, its counters disagreed with
its allocations, a queue held more than its quota, an allocation was charged to a queue
other than its job's, a gang was placed in part, or a job had two live attempts at once
(a preempted attempt still live when its job's next one was placed).
"""

import threading
import time

from tests.processes import raw_connection

# One statement, so one snapshot: the node counters and the live allocations behind them.
NODE_ACCOUNTING_SQL = """
SELECT n.name,
       n.cpu_millis, n.memory_mb, n.gpu,
       n.allocated_cpu_millis, n.allocated_memory_mb, n.allocated_gpu,
       COALESCE(SUM(a.cpu_millis) FILTER (WHERE a.status IN ('reserved', 'active')), 0),
       COALESCE(SUM(a.memory_mb) FILTER (WHERE a.status IN ('reserved', 'active')), 0),
       COALESCE(SUM(a.gpu) FILTER (WHERE a.status IN ('reserved', 'active')), 0),
       COUNT(e.id) FILTER (WHERE e.status = 'running')
FROM nodes_node n
LEFT JOIN resources_allocation a ON a.node_id = n.id
LEFT JOIN jobs_jobexecution e ON e.id = a.execution_id
GROUP BY n.id
"""


# Each queue's quota and what its jobs hold now.
QUEUE_ACCOUNTING_SQL = """
SELECT q.name, q.quota_cpu_millis, q.quota_memory_mb, q.quota_gpu,
       COALESCE(SUM(a.cpu_millis), 0), COALESCE(SUM(a.memory_mb), 0), COALESCE(SUM(a.gpu), 0)
FROM resources_queue q
LEFT JOIN jobs_job j ON j.queue_id = q.id
LEFT JOIN jobs_jobexecution e ON e.job_id = j.id
LEFT JOIN resources_allocation a
       ON a.execution_id = e.id AND a.status IN ('reserved', 'active')
GROUP BY q.id
"""

# Allocations charged to a queue other than their job's (placement copies the job's).
ALLOCATION_QUEUE_SQL = """
SELECT a.id, a.queue_id, j.queue_id FROM resources_allocation a
  JOIN jobs_jobexecution e ON e.id = a.execution_id
  JOIN jobs_job j ON j.id = e.job_id
 WHERE a.queue_id <> j.queue_id
"""

# Jobs with more than one live attempt.
LIVE_ATTEMPTS_SQL = """
SELECT job_id, count(DISTINCT attempt) FROM jobs_jobexecution
 WHERE status IN ('reserved', 'running')
 GROUP BY job_id HAVING count(DISTINCT attempt) > 1
"""


# Gangs placed in part: an attempt of a gang with fewer executions or allocations than
# tasks (placement writes them all in one statement), or a pending gang that still holds
# room (an attempt ends as one, once none of its tasks is live).
GANG_ACCOUNTING_SQL = """
SELECT j.id, e.attempt, j.tasks, COUNT(e.id), COUNT(a.id),
       COUNT(a.id) FILTER (WHERE a.status IN ('reserved', 'active') AND j.status = 'pending')
FROM jobs_job j
JOIN jobs_jobexecution e ON e.job_id = j.id
LEFT JOIN resources_allocation a ON a.execution_id = e.id
WHERE j.tasks > 1
GROUP BY j.id, e.attempt, j.tasks
HAVING COUNT(e.id) <> j.tasks OR COUNT(a.id) <> j.tasks
    OR COUNT(a.id) FILTER (WHERE a.status IN ('reserved', 'active') AND j.status = 'pending') > 0
"""


class AccountingSampler(threading.Thread):
    """Polls the accounting every few milliseconds while the test runs, recording breaches."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stopped = threading.Event()
        self.samples = 0
        self.violations: list[str] = []
        self.max_running: dict[str, int] = {}
        self.max_queue_cpu: dict[str, int] = {}

    def run(self):
        with raw_connection() as conn:
            while not self.stopped.is_set():
                for row in conn.execute(NODE_ACCOUNTING_SQL).fetchall():
                    self.check(row)
                for row in conn.execute(QUEUE_ACCOUNTING_SQL).fetchall():
                    self.check_queue(row)
                for job_id, attempt, tasks, executions, allocations, held in conn.execute(
                    GANG_ACCOUNTING_SQL
                ).fetchall():
                    self.violations.append(
                        f"gang job {job_id} attempt {attempt} of {tasks} tasks: {executions} "
                        f"executions, {allocations} allocations, {held} live while pending"
                    )
                for allocation, queue, of_job in conn.execute(ALLOCATION_QUEUE_SQL).fetchall():
                    self.violations.append(
                        f"allocation {allocation} charged to queue {queue}, its job's is {of_job}"
                    )
                for job_id, live in conn.execute(LIVE_ATTEMPTS_SQL).fetchall():
                    self.violations.append(f"job {job_id}: {live} live attempts")
                self.samples += 1
                time.sleep(0.01)

    def check_queue(self, row):
        name, quotas, held = row[0], row[1:4], row[4:7]
        self.max_queue_cpu[name] = max(self.max_queue_cpu.get(name, 0), held[0])
        for resource, quota, used in zip(("cpu", "memory", "gpu"), quotas, held, strict=True):
            if quota is not None and used > quota:
                self.violations.append(f"queue {name} {resource}: holds {used} > quota {quota}")

    def check(self, row):
        name, *capacity = row[:4]
        counters, live, running = row[4:7], row[7:10], row[10]
        self.max_running[name] = max(self.max_running.get(name, 0), running)
        for resource, cap, counter, held in zip(
            ("cpu", "memory", "gpu"), capacity, counters, live, strict=True
        ):
            if held > cap or counter > cap:
                self.violations.append(f"{name} {resource}: live {held}, counter {counter} > {cap}")
            if held != counter:
                self.violations.append(f"{name} {resource}: counter {counter} != live {held}")

    def stop(self):
        self.stopped.set()
        self.join(timeout=5)
