"""The node agent's in-process parts: which node this process is, its host's capacity,
the loop that heartbeats (with what its jobs use), applies stops (cancels, preemptions,
attempts taken away) and watches memory,
and the clean-up of what a previous agent of this node left running."""

import logging
import os
import threading
import time
from pathlib import Path

import requests
from django.conf import settings

from nodes.models import node_queue_name, node_stops_queue_name

from . import metrics
from .broker_watch import BrokerWatch
from .client import Refused, Revoked, Stopped, control_plane
from .guard import kill_agent_groups
from .runner import agent_identity, running
from .sampling import UsageMeter
from .stop_nudges import StopNudges

logger = logging.getLogger(__name__)

_node: str | None = None


def become_node(name: str) -> None:
    """Mark this process as the agent of a node; execution tasks run only where set."""
    global _node
    _node = name


def current_node() -> str | None:
    """The name of the node this process is the agent of, if it is one."""
    return _node


def detect_cpu_millis() -> int:
    return len(os.sched_getaffinity(0)) * 1000


def detect_memory_mb() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)


def detect_gpu() -> int:
    nvidia = Path("/proc/driver/nvidia/gpus")
    return len(list(nvidia.iterdir())) if nvidia.is_dir() else 0


def reap_orphans(node_name: str) -> int:
    """Kill the process groups a previous agent of this node left behind (it was killed
    and its guard with it, or it crashed). Their executions are failed over and run again
    elsewhere, so letting them go on would run the same work twice."""
    reaped = kill_agent_groups(agent_identity(node_name))
    if reaped:
        logger.warning("killed %s leftover job process group(s) node=%s", reaped, node_name)
    return reaped


class AgentLoop(threading.Thread):
    """Heartbeats with the running tokens, applies stops, and enforces memory limits.

    It asks which executions to stop when a nudge arrives on the node's stops queue
    (`StopNudges`), when its calls get through again after failing (the outage may
    have hidden nudges, and attempts may have been taken away meanwhile), and every
    NODE_CANCEL_POLL_SECONDS otherwise, which only a lost nudge needs; every second
    while the broker is unreachable, since no nudge comes then."""

    def __init__(self, node_name: str):
        super().__init__(name=f"agent-{node_name}", daemon=True)
        self.node_name = node_name
        self.stopped = threading.Event()
        self.meter = UsageMeter()
        self.broker = BrokerWatch(node_queue_name(node_name))
        self.nudges = StopNudges(node_stops_queue_name(node_name))

    def run(self):
        self.broker.start()
        self.nudges.start()
        next_heartbeat = next_cancel_check = 0.0
        cut_off = False  # the last call failed: check stops as soon as one gets through
        while not self.stopped.wait(settings.NODE_MEMORY_POLL_SECONDS):
            running.enforce_memory_limits()
            now = time.monotonic()
            if self.nudges.asked.is_set():
                self.nudges.asked.clear()
                next_cancel_check = now
            if now < min(next_heartbeat, next_cancel_check):
                continue
            try:
                if now >= next_heartbeat:
                    self.heartbeat()
                    # The next an interval after this one was answered: a web server slow
                    # to answer gets no heartbeats back to back, and the control plane
                    # sees them arrive as far apart as it is slow (node_loss_stretch).
                    next_heartbeat = time.monotonic() + settings.NODE_HEARTBEAT_SECONDS
                if now >= next_cancel_check or cut_off:
                    self.apply_cancels()
                    next_cancel_check = now + self.cancel_check_interval()
                cut_off = False
            except (Revoked, Stopped):
                return
            except (requests.RequestException, Refused) as exc:
                cut_off = True
                metrics.database_errors.inc()
                logger.warning(
                    "agent loop lost the control plane node=%s problem=%s; will retry",
                    self.node_name,
                    type(exc).__name__,
                )

    def cancel_check_interval(self) -> float:
        if self.broker.reachable():
            return settings.NODE_CANCEL_POLL_SECONDS
        return min(settings.NODE_CANCEL_POLL_SECONDS, 1.0)

    def heartbeat(self):
        # The server stamps the heartbeat when it gets it, after this list is made: an
        # execution claimed in between is missed once, and the control worker's grace
        # (a heartbeat interval) covers that unless the request waits longer than it.
        tokens = running.tokens()
        cores, resident_bytes = self.meter.measure(running.process_groups())
        used = {"cpu": round(cores, 3), "memory_mb": resident_bytes // 2**20}
        control_plane().heartbeat(
            node_name=self.node_name,
            running_tokens=tokens,
            used=used,
            broker_reachable=self.broker.reachable(),
        )
        metrics.heartbeats.inc()
        metrics.used.labels("cpu").set(cores)
        metrics.used.labels("memory").set(resident_bytes)

    def apply_cancels(self):
        tokens = running.tokens()
        if tokens:
            asked = control_plane().stop_requests(tokens)
            for token in asked.cancel:
                running.cancel(token)
            for request in asked.preempt:
                running.preempt(
                    request["token"],
                    grace_seconds=request["grace_seconds"],
                    preempted_by=request["preempted_by"],
                )
            for token in asked.taken_away:
                running.take_away(token)

    def stop(self):
        self.stopped.set()
        self.broker.stop()
        self.nudges.stop()
