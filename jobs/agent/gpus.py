"""Which of its node's GPUs each job gets. The control plane counts GPUs (a node's `gpu`,
an allocation's `gpu`) and never places more than a node has; the agent picks the devices,
as a kubelet's device manager does: a job of N GPUs gets N of the node's device indices
that no other job of this agent holds, in CUDA_VISIBLE_DEVICES (and JOB_GPU_IDS), and a
job of none gets an empty CUDA_VISIBLE_DEVICES, so CUDA shows it no device.

A device is handed back when its job's processes are gone. The control plane frees the
allocation only once the job's outcome is reported, after that, so a job is handed its
devices at once, with one exception: an attempt failed over while its node was cut off
(taken away) is released before the agent, back in touch, has killed it. So a job whose
devices are still held waits for them, at most NODE_GPU_WAIT_SECONDS, and is not started
if they stay held."""

import threading
import time


class GpusHeld(Exception):
    """The devices a job needs are still held by jobs of this agent."""


class NodeGpus:
    """The node's GPU device indices (0 to count - 1, in PCI bus order), and which are free."""

    def __init__(self, count: int = 0):
        self._changed = threading.Condition()
        self.use(count)

    def use(self, count: int) -> None:
        """The node's device count, as the agent registered it, before any job runs."""
        with self._changed:
            self.count = count
            self._free = set(range(count))

    def take(self, count: int, wait_seconds: float) -> tuple[int, ...]:
        """`count` free devices, the lowest first; waits while too few are free."""
        if count > self.count:
            raise GpusHeld(f"it needs {count} GPU(s), and this node has {self.count}")
        deadline = time.monotonic() + wait_seconds
        with self._changed:
            while len(self._free) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GpusHeld(
                        f"{count - len(self._free)} of its {count} GPU(s) still held by "
                        f"ended jobs after {wait_seconds:g} s"
                    )
                self._changed.wait(left)
            taken = tuple(sorted(self._free)[:count])
            self._free.difference_update(taken)
            return taken

    def give_back(self, devices: tuple[int, ...]) -> None:
        with self._changed:
            self._free.update(devices)
            self._changed.notify_all()


def visible_devices(devices: tuple[int, ...]) -> str:
    return ",".join(str(d) for d in devices)


gpus = NodeGpus()
