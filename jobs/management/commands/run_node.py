"""`manage.py run_node --name NAME`: the node agent.

Registers the node (capacity detected from the host unless given), heartbeats, and
runs a Celery worker on the node's own queue, `node.NAME`, in this process.

With `--hollow N` it runs N simulated nodes instead, for tests and benchmarks of the
control plane only (`jobs.agent.hollow`; refused unless HOLLOW_NODES_ALLOWED=true).

It reaches the control plane through the web API only (SCHEDULER_API_URL), with the
node's key (`manage.py issue_node_token NAME`) from NODE_KEY or from the file NODE_KEY_FILE
names (readable by its owner only), and the broker: no database. It refuses to start with
DATABASE_URL set, so no agent keeps the platform's password by habit.
"""

import os
import signal
import socket
import stat

from celery import current_app
from celery.signals import worker_ready, worker_shutting_down
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from jobs.agent import metrics as agent_metrics
from jobs.agent import supervision as agent
from jobs.agent import tasks  # noqa: F401  (registers the execution task in this worker)
from jobs.agent.cgroups import MODES, CgroupsUnavailable, cgroups
from jobs.agent.client import ControlPlane, Refused, Revoked, use_control_plane
from jobs.agent.gpus import gpus
from jobs.agent.guard import start_guard
from jobs.agent.hollow import (
    HollowFleet,
    HollowKeysError,
    hollow_node_names,
    read_hollow_keys,
    valid_prefix,
)
from jobs.agent.runner import agent_identity, pidfd_supported, running
from jobs.agent.success_batching import successes
from jobs.agent.task_events import use_worker_dispatcher
from jobs.management.metrics_port import add_metrics_arguments, serve_metrics
from nodes.models import NODE_NAME_RE, node_queue_name

AGENT_VERSION = "0.1.0"


def stop_filling_freed_room(**kwargs) -> None:
    """On shutdown, finishes leave their room to the scheduler rather than take new work."""
    successes.fill_freed_room = False


def node_key() -> str:
    """The node's key, from NODE_KEY or the file NODE_KEY_FILE names; a file others may
    read is refused, as ssh refuses such a private key."""
    key = os.environ.get("NODE_KEY", "")
    path = os.environ.get("NODE_KEY_FILE", "")
    if key and path:
        raise CommandError("Set NODE_KEY or NODE_KEY_FILE, not both.")
    if path:
        try:
            mode = os.stat(path).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise CommandError(f"NODE_KEY_FILE {path} is readable by others; chmod 600 it.")
            with open(path) as file:
                key = file.read().strip()
        except OSError as exc:
            raise CommandError(f"NODE_KEY_FILE {path}: {exc.strerror}") from exc
    if not key:
        raise CommandError(
            "Set NODE_KEY (or NODE_KEY_FILE) to the node's key: manage.py issue_node_token NAME."
        )
    return key


def databases_configured() -> list[str]:
    """The databases this process could reach; none for an agent (Django puts its dummy
    backend in place of an empty DATABASES)."""
    return [
        alias
        for alias, database in settings.DATABASES.items()
        if database.get("ENGINE") != "django.db.backends.dummy"
    ]


def stop_on_revoked_key() -> None:
    """The key was refused: this agent can report nothing any more, and the control plane
    fails its node over when its heartbeats stop. Kill its jobs and stop, as a lost node
    would, rather than run work that also runs elsewhere."""
    running.kill_all("node key revoked")
    os.kill(os.getpid(), signal.SIGTERM)


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
        parser.add_argument(
            "--address",
            help="How other nodes reach this one, as a gang's tasks see it in "
            "JOB_TASK_NODES (default: the host name)",
        )
        parser.add_argument("--loglevel", default="INFO")
        parser.add_argument(
            "--hollow",
            type=int,
            metavar="N",
            help="Run N simulated nodes NAME-1 to NAME-N that run nothing, for tests and "
            "benchmarks of the control plane (needs HOLLOW_NODES_ALLOWED=true; keys from "
            "NODE_KEY_FILE, one 'NAME KEY' line per node)",
        )
        parser.add_argument(
            "--hollow-threads",
            type=int,
            default=32,
            help="Threads making the hollow nodes' HTTP calls (default 32)",
        )
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
        address,
        loglevel,
        metrics_port,
        metrics_address,
        hollow,
        hollow_threads,
        **options,
    ):
        if "DATABASE_URL" in os.environ or databases_configured():
            raise CommandError(
                "A node agent reaches the control plane through its web API only: "
                "unset DATABASE_URL, and set SCHEDULER_API_URL and NODE_KEY."
            )
        if hollow is not None and not settings.HOLLOW_NODES_ALLOWED:
            raise CommandError(
                "Hollow nodes run nothing and are for tests and benchmarks only: "
                "set HOLLOW_NODES_ALLOWED=true to start them."
            )
        if not NODE_NAME_RE.match(name):
            raise CommandError("--name must be lower-case letters, digits and dashes (max 63).")
        cpu_millis = round(cpu * 1000) if cpu is not None else agent.detect_cpu_millis()
        memory_mb = memory_mb if memory_mb is not None else agent.detect_memory_mb()
        gpu = gpu if gpu is not None else agent.detect_gpu()
        if cpu_millis < 1 or memory_mb < 0 or gpu < 0:
            raise CommandError("--cpu must be positive; --memory-mb and --gpu not negative.")
        labels = dict(parse_label(item) for item in label)
        if hollow is not None:
            spec = {"cpu": cpu_millis / 1000, "memory_mb": memory_mb, "gpu": gpu, "labels": labels}
            self.run_hollow(prefix=name, count=hollow, spec=spec, threads=hollow_threads)
            return
        if not pidfd_supported():
            raise CommandError(
                "This kernel has no pidfd_open: a node agent needs Linux 5.3 or later, "
                "as it waits on each job's process through a pidfd."
            )
        if settings.NODE_CGROUPS not in MODES:
            raise CommandError(f"NODE_CGROUPS must be one of {', '.join(MODES)}.")
        if settings.NODE_JOB_PIDS_MAX < 0:
            raise CommandError("NODE_JOB_PIDS_MAX must be 0 (no limit) or more.")
        slots = slots or min(64, max(4, 4 * cpu_millis // 1000))
        control_plane = ControlPlane(
            base_url=settings.SCHEDULER_API_URL, key=node_key(), pool_size=slots + 4
        )
        control_plane.on_revoked = stop_on_revoked_key
        use_control_plane(control_plane)
        serve_metrics(self, agent_metrics.serve, port=metrics_port, address=metrics_address)
        try:
            node = control_plane.register(
                {
                    "name": name,
                    "cpu": cpu_millis / 1000,
                    "memory_mb": memory_mb,
                    "gpu": gpu,
                    "labels": labels,
                    "address": address or socket.gethostname(),
                    "agent_version": AGENT_VERSION,
                }
            )
        except (Refused, Revoked) as exc:
            raise CommandError(f"registering with {settings.SCHEDULER_API_URL}: {exc}") from exc
        self.stdout.write(
            f"node {name}: {cpu_millis / 1000:g} CPU, {memory_mb} MB, {gpu} GPU, "
            f"labels {node['labels']}, {slots} slots, queue {node['queue']}, "
            f"control plane {settings.SCHEDULER_API_URL}"
        )
        gpus.use(gpu)  # as registered: the control plane places no more than that
        reaped = agent.reap_orphans(name)
        if reaped:
            self.stdout.write(f"killed {reaped} job process group(s) left by a previous agent")
        try:  # before the guard starts: with cgroup v2 the agent may move to a group of its own
            said = cgroups.start(
                settings.NODE_CGROUPS,
                name,
                agent_identity(name),
                pids_max=settings.NODE_JOB_PIDS_MAX,
            )
        except CgroupsUnavailable as exc:
            raise CommandError(f"NODE_CGROUPS=required, and {exc}") from exc
        self.stdout.write(f"node {name}: {said}")
        start_guard(agent_identity(name))
        agent.become_node(name)
        loop = agent.AgentLoop(name)
        loop.start()
        worker_shutting_down.connect(stop_filling_freed_room, weak=False)
        worker_ready.connect(use_worker_dispatcher, weak=False)
        try:
            current_app.worker_main(
                argv=[
                    "worker",
                    f"--queues={node_queue_name(name)}",
                    f"--hostname={name}@{socket.gethostname()}",
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
            control_plane.stop()
            cgroups.stop()

    def run_hollow(self, *, prefix: str, count: int, spec: dict, threads: int) -> None:
        """N hollow nodes until SIGTERM or SIGINT; then they take no more work, end what
        they run (a second signal: at once), and stop."""
        if count < 1 or threads < 1:
            raise CommandError("--hollow and --hollow-threads must be at least 1.")
        if not valid_prefix(prefix, count):
            raise CommandError(f"--name {prefix!r}: {prefix}-{count} is no valid node name.")
        path = os.environ.get("NODE_KEY_FILE", "")
        if not path or os.environ.get("NODE_KEY"):
            raise CommandError(
                "Hollow nodes take their keys from NODE_KEY_FILE (not NODE_KEY), one 'NAME KEY' "
                f"line per node: manage.py issue_node_token {prefix} --count {count} > FILE"
            )
        try:
            keys = read_hollow_keys(path, hollow_node_names(prefix, count))
        except HollowKeysError as exc:
            raise CommandError(str(exc)) from exc
        fleet = HollowFleet(keys=keys, base_url=settings.SCHEDULER_API_URL, threads=threads)
        spec = {
            **spec,
            "address": socket.gethostname(),
            "agent_version": f"{AGENT_VERSION}+hollow",
        }
        problems = fleet.register(spec)
        if problems:
            fleet.stop()
            raise CommandError(
                f"{len(problems)} hollow node(s) could not register with "
                f"{settings.SCHEDULER_API_URL}: {'; '.join(problems[:5])}"
            )
        self.stdout.write(
            f"{count} hollow nodes {prefix}-1 to {prefix}-{count}: {spec['cpu']:g} CPU, "
            f"{spec['memory_mb']} MB, {spec['gpu']} GPU each, labels {spec['labels']}, "
            f"control plane {settings.SCHEDULER_API_URL}"
        )
        signals = []

        def on_signal(signum, frame):
            signals.append(signum)
            fleet.stop_consuming()
            if len(signals) > 1:
                fleet.stopped.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        fleet.start_loops()
        try:
            fleet.consume()
            # What runs ends and is reported; its room is left to the scheduler.
            fleet.fill_freed_room = False
            while not fleet.idle() and not fleet.stopped.wait(0.2):
                pass
        finally:
            running_now, started, succeeded = fleet.counts()
            fleet.stop()
            self.stdout.write(
                f"hollow nodes stopped: {started} executions started, {succeeded} succeeded, "
                f"{running_now} left running"
            )
