"""The node agent's in-process state: which node this process is, its host's capacity,
and the heartbeat thread."""

import logging
import os
import threading
from pathlib import Path

from django.db import DatabaseError, InterfaceError, close_old_connections, connection

from .services import node_heartbeat

logger = logging.getLogger(__name__)

_node_name: str | None = None


def become_node(name: str) -> None:
    """Mark this process as the agent of node `name`; execution tasks run only where set."""
    global _node_name
    _node_name = name


def current_node_name() -> str | None:
    return _node_name


def detect_cpu_millis() -> int:
    return len(os.sched_getaffinity(0)) * 1000


def detect_memory_mb() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)


def detect_gpu() -> int:
    nvidia = Path("/proc/driver/nvidia/gpus")
    return len(list(nvidia.iterdir())) if nvidia.is_dir() else 0


class Heartbeat(threading.Thread):
    """Writes the node's heartbeat every `interval` seconds until stopped."""

    def __init__(self, node_name: str, interval: float):
        super().__init__(name=f"heartbeat-{node_name}", daemon=True)
        self.node_name = node_name
        self.interval = interval
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.wait(self.interval):
            close_old_connections()
            try:
                node_heartbeat(name=self.node_name)
            except (DatabaseError, InterfaceError):
                logger.warning("heartbeat failed node=%s; will retry", self.node_name)
        connection.close()

    def stop(self):
        self.stopped.set()
