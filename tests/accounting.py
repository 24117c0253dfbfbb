"""Checks of the resource accounting, sampled from SQL while real processes run.

AccountingSampler polls, on a connection of its own, every node's counters and the live
allocations behind them, and records any moment where a node held more than its
capacity or its counters disagreed with its allocations.
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


class AccountingSampler(threading.Thread):
    """Polls the accounting every few milliseconds while the test runs, recording breaches."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stopped = threading.Event()
        self.samples = 0
        self.violations: list[str] = []
        self.max_running: dict[str, int] = {}

    def run(self):
        with raw_connection() as conn:
            while not self.stopped.is_set():
                for row in conn.execute(NODE_ACCOUNTING_SQL).fetchall():
                    self.check(row)
                self.samples += 1
                time.sleep(0.01)

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
