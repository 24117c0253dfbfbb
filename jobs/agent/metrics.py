"""The node agent's own metrics, served by `run_node --metrics-port`: what this agent
runs, what its jobs use, and how its heartbeats go. The cluster's figures, the same
from every web worker, are at the web's `/metrics`; these are this process's alone."""

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client import start_http_server as _start_http_server

from .runner import running

registry = CollectorRegistry()
ProcessCollector(registry=registry)

running_executions = Gauge(
    "scheduler_agent_running_executions",
    "Executions this agent has taken on and not yet finished.",
    registry=registry,
)
running_executions.set_function(lambda: len(running.tokens()))
used = Gauge(
    "scheduler_agent_used",
    "What this agent's jobs used at its last heartbeat: cpu in CPU seconds per second, "
    "memory in resident bytes.",
    ["resource"],
    registry=registry,
)
heartbeats = Counter(
    "scheduler_agent_heartbeats", "Heartbeats this agent has sent.", registry=registry
)
database_errors = Counter(
    "scheduler_agent_database_errors",
    "Times the agent's loop lost the control plane (its heartbeat or cancel check failed); "
    "the name is from when agents wrote to the database.",
    registry=registry,
)


def serve(*, port: int, address: str) -> None:
    """Serve this registry over HTTP from a thread of its own."""
    _start_http_server(port, addr=address, registry=registry)
