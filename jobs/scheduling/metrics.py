"""The scheduler process's own metrics, served by `run_scheduler --metrics-port`: how
long its cycles take and whether it leads. The cluster's figures, the same from every
web worker, are at the web's `/metrics`; these are this process's alone."""

from prometheus_client import CollectorRegistry, Gauge, Histogram, ProcessCollector
from prometheus_client import start_http_server as _start_http_server

# A cycle with free room takes a few milliseconds; a large backlog on many nodes
# (bench/placement.py) takes seconds.
CYCLE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class SchedulerMetrics:
    """A registry of its own per scheduler, so tests can run several in one process."""

    def __init__(self, *, is_leader):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.cycle_seconds = Histogram(
            "scheduler_cycle_duration_seconds",
            "Scheduling cycles this process ran as the leader, by how long each took "
            "(settling drained nodes, placing, committing and publishing).",
            buckets=CYCLE_BUCKETS,
            registry=self.registry,
        )
        self.leader = Gauge(
            "scheduler_leader",
            "1 while this process holds the leader lock, 0 while it stands by.",
            registry=self.registry,
        )
        self.leader.set_function(lambda: float(is_leader()))

    def serve(self, *, port: int, address: str) -> None:
        """Serve the registry over HTTP from a thread of its own."""
        _start_http_server(port, addr=address, registry=self.registry)
