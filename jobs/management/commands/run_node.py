"""`manage.py run_node --name NAME`: the node agent.

Registers the node (capacity detected from the host unless given), heartbeats, and
runs a Celery worker on the node's own queue, `node.NAME`, in this process.
"""

import socket

from celery import current_app
from celery.signals import worker_ready, worker_shutting_down
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from jobs.agent import metrics as agent_metrics
from jobs.agent import supervision as agent
from jobs.agent import tasks  # noqa: F401  (registers the execution task in this worker)
from jobs.agent.guard import start_guard
from jobs.agent.runner import agent_identity
from jobs.agent.success_batching import successes
from jobs.agent.task_events import use_worker_dispatcher
from jobs.management.metrics_port import add_metrics_arguments, serve_metrics
from nodes.models import NODE_NAME_RE, node_queue_name
from nodes.services import node_register

AGENT_VERSION = "0.1.0"


def stop_filling_freed_room(**kwargs) -> None:
    """On shutdown, finishes leave their room to the scheduler rather than take new work."""
    successes.fill_freed_room = False


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise CommandError(f"--label takes key=value, got {text!r}")
    return key, value


class Command(BaseCommand):
    help = "Run a node agent: register the node, heartbeat, and run its Celery worker."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="Node name, e.g. node-a")
        parser.add_argument("--cpu", type=float, help="CPU cores to offer (default: the host's)")
        parser.add_argument("--memory-mb", type=int, help="Memory to offer (default: the host's)")
        parser.add_argument("--gpu", type=int, help="GPUs to offer (default: the host's)")
        parser.add_argument(
            "--label", action="append", default=[], help="key=value, repeatable (e.g. zone=a)"
        )
        parser.add_argument(
            "--slots",
            type=int,
            help="How many executions may run at once (default: 4 per CPU core, 4 to 64).",
        )
        parser.add_argument("--loglevel", default="INFO")
        add_metrics_arguments(parser, "agent")

    def handle(
        self,
        *args,
        name,
        cpu,
        memory_mb,
        gpu,
        label,
        slots,
        loglevel,
        metrics_port,
        metrics_address,
        **options,
    ):
        if not NODE_NAME_RE.match(name):
            raise CommandError("--name must be lower-case letters, digits and dashes (max 63).")
        cpu_millis = round(cpu * 1000) if cpu is not None else agent.detect_cpu_millis()
        memory_mb = memory_mb if memory_mb is not None else agent.detect_memory_mb()
        gpu = gpu if gpu is not None else agent.detect_gpu()
        if cpu_millis < 1 or memory_mb < 0 or gpu < 0:
            raise CommandError("--cpu must be positive; --memory-mb and --gpu not negative.")
        serve_metrics(self, agent_metrics.serve, port=metrics_port, address=metrics_address)
        try:
            node = node_register(
                name=name,
                cpu_millis=cpu_millis,
                memory_mb=memory_mb,
                gpu=gpu,
                labels=dict(parse_label(item) for item in label),
                address=socket.gethostname(),
                agent_version=AGENT_VERSION,
            )
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        slots = slots or min(64, max(4, 4 * cpu_millis // 1000))
        self.stdout.write(
            f"node {node.name}: {cpu_millis / 1000:g} CPU, {memory_mb} MB, {gpu} GPU, "
            f"labels {node.labels}, {slots} slots, queue {node.queue_name}"
        )
        reaped = agent.reap_orphans(node.name)
        if reaped:
            self.stdout.write(f"killed {reaped} job process group(s) left by a previous agent")
        start_guard(agent_identity(node.name))
        agent.become_node(node.id, node.name)
        loop = agent.AgentLoop(node.name)
        loop.start()
        worker_shutting_down.connect(stop_filling_freed_room, weak=False)
        worker_ready.connect(use_worker_dispatcher, weak=False)
        try:
            current_app.worker_main(
                argv=[
                    "worker",
                    f"--queues={node_queue_name(node.name)}",
                    f"--hostname={node.name}@{socket.gethostname()}",
                    "--pool=threads",
                    f"--concurrency={slots}",
                    f"--loglevel={loglevel}",
                    "--without-gossip",
                    "--without-mingle",
                    "--task-events",
                ]
            )
        finally:
            loop.stop()
            successes.stop()
