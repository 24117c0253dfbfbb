"""Real platform processes for tests: the scheduler, node agents, beat, the control
worker, the web and Flower as subprocesses.

Each runs against the test database and the test Redis database, writes its
output to a log file under the test's tmp dir, and is always stopped (SIGTERM, then
SIGKILL of its whole process group) when the test ends.

Node agents, as in production, have no database: each reaches the control plane through
a web server the cluster starts for them (`api`), with a node key issued for it.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import redis
from amqp.exceptions import ChannelError
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from kombu import Connection
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

from jobs.scheduling.leader import LEADER_LOCK_ID
from nodes.models import Node, node_queue_name
from nodes.services import node_credential_issue
from resources.models import DEFAULT_QUEUE_NAME, Queue
from scheduler_site.celery import app as celery_app

BASE_DIR = Path(settings.BASE_DIR)


def wait_until(predicate, timeout: float, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


def _broker_port() -> str:
    """The port of the broker the suite uses: CI's Redis on 6379, or a private one."""
    return str(urlsplit(settings.CELERY_BROKER_URL).port or 6379)


def _redis_server_argv() -> list[str]:
    port = _broker_port()
    return [
        "redis-server",
        "--daemonize",
        "yes",
        "--bind",
        "127.0.0.1",
        "-::1",
        "--port",
        port,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        "/var/lib/redis",
        "--logfile",
        "/var/log/redis/ci.log" if port == "6379" else f"/var/log/redis/{port}.log",
    ]


def restart_redis() -> None:
    """Stop the broker's Redis without saving (all messages are lost) and start it again."""
    subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", _broker_port(), "shutdown", "nosave"], check=False
    )
    wait_until(lambda: not _redis_answers(), 10, message="Redis to stop")
    subprocess.run(_redis_server_argv(), check=True)
    wait_until(_redis_answers, 10, message="Redis to start")


def _redis_answers() -> bool:
    result = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", _broker_port(), "ping"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() == "PONG"


def workers_answering_ping() -> list[str]:
    """Hostnames of the Celery workers that answer a ping; none while the broker is away.

    A connection of its own each time: a pooled one may have died with a restarted Redis.
    """
    try:
        with celery_app.connection_for_write() as conn:
            replies = celery_app.control.ping(timeout=0.5, connection=conn)
    except (OperationalError, RedisConnectionError):
        return []
    return [host for reply in replies for host in reply]


def queue_consumers(broker_url: str, queue: str) -> int:
    """How many consumers an AMQP queue has (0 when it is not declared or the broker is
    away): a worker consumes its queue once it is ready. (This process's Celery app is the
    suite's, on Redis; it cannot ping workers on another broker.)"""
    try:
        with Connection(broker_url) as conn:
            channel = conn.channel()
            try:
                return channel.queue_declare(queue=queue, passive=True).consumer_count
            finally:
                if channel.is_open:
                    channel.close()
    except (OperationalError, OSError, ChannelError):
        return 0


def raw_connection() -> psycopg.Connection:
    """A connection of the test's own, for samplers that run beside the processes."""
    db = settings.DATABASES["default"]
    return psycopg.connect(
        dbname=db["NAME"],
        user=db["USER"],
        host=db["HOST"],
        port=db["PORT"] or 5432,
        autocommit=True,
    )


class Process:
    def __init__(self, name: str, argv: list[str], env: dict, log_path: Path):
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.popen: subprocess.Popen | None = None

    def start(self) -> "Process":
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=BASE_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no clean-up runs."""
        self.signal_group(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 15) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        self.signal_group(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Cluster:
    """Starts platform processes for one test and stops them all afterwards."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.processes: list[Process] = []
        self.api: Process | None = None
        self.api_port: int | None = None
        self.api_workers = 1
        # Where the node agents' web server listens: more than loopback when agents run
        # on hosts of their own (tests/netns.py).
        self.api_hosts = ["127.0.0.1"]
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": self._database_url(),
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "NODE_WORK_DIR": str(tmp_path / "work"),
            "JOB_LOG_DIR": str(tmp_path / "job-logs"),
            "PYTHONUNBUFFERED": "1",
        }
        self.broker_url: str | None = None  # None: the suite's broker (settings)

    def use_broker(self, url: str) -> None:
        """Run this cluster's processes on the broker at `url` (e.g. a RabbitMQ vhost)
        rather than the suite's; the cache stays on the suite's Redis."""
        self.broker_url = url
        self.env["CELERY_BROKER_URL"] = url
        self.env["CACHE_URL"] = settings.CACHES["default"]["LOCATION"]

    @staticmethod
    def _database_url() -> str:
        db = connection.settings_dict
        return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"

    def _start(self, name: str, *args: str) -> Process:
        return self._spawn(name, [sys.executable, str(BASE_DIR / "manage.py"), *args])

    def _spawn(self, name: str, argv: list[str]) -> Process:
        return self._spawn_with(name, argv, self.env)

    def start_beat(self) -> Process:
        return self._spawn(
            "beat",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "scheduler_site",
                "beat",
                "-S",
                "jobs.beat:ScheduleBeat",
                "--pidfile=",
                "--loglevel=INFO",
            ],
        )

    def start_control_worker(self) -> Process:
        process = self._spawn(
            "control",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "scheduler_site",
                "worker",
                "-Q",
                "control",
                "-n",
                "control@%h",
                "--concurrency=2",
                "--pool=threads",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
            ],
        )

        def ready():
            return self._worker_up("control@", "control")

        wait_until(ready, 30, interval=0.2, message="the control worker")
        return process

    def start_flower(self, *, port: int, db: Path, basic_auth: str) -> Process:
        """Flower in persistent mode, as scripts/up starts it, keeping its state in `db`."""
        return self._spawn(
            "flower",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "scheduler_site",
                "flower",
                "--address=127.0.0.1",
                f"--port={port}",
                "--persistent=True",
                f"--db={db}",
                "--state_save_interval=60000",
                f"--basic_auth={basic_auth}",
            ],
        )

    def start_maintenance(self) -> None:
        """Beat and the control worker: reconciliation and node-loss handling."""
        self.start_control_worker()
        self.start_beat()

    def start_submitter(self, name: str, *, team: str, queues: list[str], count: int, **options):
        """A process submitting `count` jobs through the submission service (tests.submitter)."""
        args = [f"--name={name}", f"--team={team}", f"--count={count}"]
        args += [f"--queue={queue}" for queue in queues]
        args += [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
        return self._spawn(name, [sys.executable, "-m", "tests.submitter", *args])

    def start_scheduler(
        self, name: str = "scheduler", wait_leader: bool = True, metrics_port: int | None = None
    ) -> Process:
        args = [f"--metrics-port={metrics_port}"] if metrics_port else []
        process = self._start(name, "run_scheduler", *args)
        if wait_leader:
            wait_until(lambda: self.leader_pid() is not None, 30, message="a scheduler leader")
        return process

    def leader_pid(self) -> int | None:
        """The process id of the scheduler that holds the leader lock, if one does."""
        with raw_connection() as conn:
            row = conn.execute(
                "SELECT split_part(a.application_name, '-', 3)::int"
                " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.objid = %s"
                " AND l.database ="
                " (SELECT oid FROM pg_database WHERE datname = current_database())",
                [LEADER_LOCK_ID],
            ).fetchone()
        return row[0] if row else None

    def leader(self) -> "Process":
        pid = self.leader_pid()
        return next(p for p in self.processes if p.popen is not None and p.popen.pid == pid)

    def start_node(
        self,
        name: str,
        *,
        cpu: float,
        memory_mb: int = 4096,
        gpu: int = 0,
        labels: dict | None = None,
        slots: int | None = None,
        wait: bool = True,
        metrics_port: int | None = None,
        env: dict | None = None,
        address: str | None = None,
        argv_prefix: list[str] = (),
    ) -> Process:
        """A node agent; `env` on top of the cluster's (its own broker user, say);
        `argv_prefix` runs it through another command (`ip netns exec NAME`)."""
        args = [
            "run_node",
            f"--name={name}",
            f"--cpu={cpu}",
            f"--memory-mb={memory_mb}",
            f"--gpu={gpu}",
        ]
        args += [f"--label={k}={v}" for k, v in (labels or {}).items()]
        if slots:
            args.append(f"--slots={slots}")
        if metrics_port:
            args.append(f"--metrics-port={metrics_port}")
        if address:
            args.append(f"--address={address}")
        argv = [*argv_prefix, sys.executable, str(BASE_DIR / "manage.py"), *args]
        process = self._spawn_with(name, argv, {**self.node_env(name), **(env or {})})
        if wait:
            self.wait_node_ready(name, process)
        return process

    def start_hollow_nodes(
        self,
        prefix: str,
        count: int,
        *,
        cpu: float,
        memory_mb: int = 4096,
        allowed: bool = True,
        wait: bool = True,
    ) -> Process:
        """`run_node --hollow count`: nodes PREFIX-1 to PREFIX-count in one process, with
        a key file of their keys (and HOLLOW_NODES_ALLOWED=true unless not `allowed`)."""
        key_file = self.tmp_path / f"{prefix}.keys"
        key_file.touch(mode=0o600)
        key_file.write_text(
            "".join(
                f"{name} {node_credential_issue(node_name=name)[1]}\n"
                for name in (f"{prefix}-{i}" for i in range(1, count + 1))
            )
        )
        env = {k: v for k, v in self.env.items() if k != "DATABASE_URL"}
        env["SCHEDULER_API_URL"] = f"http://127.0.0.1:{self.start_api()}"
        env["NODE_KEY_FILE"] = str(key_file)
        env["HOLLOW_NODES_ALLOWED"] = "true" if allowed else "false"
        argv = [
            sys.executable,
            str(BASE_DIR / "manage.py"),
            "run_node",
            f"--name={prefix}",
            f"--hollow={count}",
            f"--cpu={cpu}",
            f"--memory-mb={memory_mb}",
            "--gpu=0",
        ]
        process = self._spawn_with(prefix, argv, env)
        if wait:

            def ready():
                if not process.alive:
                    raise AssertionError(f"hollow nodes {prefix} exited:\n{process.log()[-3000:]}")
                return f"hollow nodes consuming {count} queues" in process.log()

            wait_until(ready, 60, interval=0.2, message=f"hollow nodes {prefix}")
        return process

    def node_env(self, name: str) -> dict:
        """A node agent's environment: the control plane's URL and a key of its node's,
        and no database."""
        env = {k: v for k, v in self.env.items() if k != "DATABASE_URL"}
        env["SCHEDULER_API_URL"] = f"http://127.0.0.1:{self.start_api()}"
        env["NODE_KEY"] = node_credential_issue(node_name=name)[1]
        return env

    def start_api(self) -> int:
        """The web server the node agents talk to, started with the first of them; its
        port."""
        if self.api is None or not self.api.alive:
            self.api_port = self.api_port or free_port()
            self.api = self.start_web(
                self.api_port,
                name="api",
                workers=self.api_workers,
                threads=16,
                hosts=self.api_hosts,
            )
        return self.api_port

    def stop_api(self) -> None:
        """Stop the node agents' web server, as a restart or an outage would."""
        self.api.stop()

    def wait_node_ready(self, name: str, process: Process, timeout: float = 30) -> None:
        def ready():
            if not process.alive:
                raise AssertionError(f"node agent {name} exited:\n{process.log()[-3000:]}")
            if not Node.objects.filter(name=name).exists():
                return False
            return self._worker_up(f"{name}@", node_queue_name(name))

        wait_until(ready, timeout, interval=0.2, message=f"node agent {name}")

    def _worker_up(self, hostname_prefix: str, queue: str) -> bool:
        if self.broker_url is None:
            return any(host.startswith(hostname_prefix) for host in workers_answering_ping())
        return queue_consumers(self.broker_url, queue) > 0

    def start_web(
        self,
        port: int,
        *,
        name: str = "web",
        workers: int = 1,
        threads: int = 4,
        hosts: list[str] = ("127.0.0.1",),
        **env: str,
    ) -> Process:
        """The web process as scripts/up starts it (gunicorn, threads), on `port` of each
        of `hosts`, with `env` on top of the cluster's; returns once it answers."""
        process = self._spawn_with(
            name,
            [
                sys.executable,
                "-m",
                "gunicorn",
                "scheduler_site.wsgi",
                *(f"--bind={host}:{port}" for host in hosts),
                f"--workers={workers}",
                "--worker-class=gthread",
                f"--threads={threads}",
            ],
            {**self.env, **env},
        )

        def answers():
            if not process.alive:
                raise AssertionError(f"the web process exited:\n{process.log()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_until(answers, 30, interval=0.2, message="the web process")
        return process

    def _spawn_with(self, name: str, argv: list[str], env: dict) -> Process:
        process = Process(name, argv, env, self.tmp_path / f"{name}.log")
        self.processes.append(process.start())
        return process

    def stop_all(self, timeout: float = 2) -> None:
        """Every process at once: SIGTERM, up to `timeout` seconds for them all to end
        (a node's running job is not waited for), then SIGKILL."""
        live = [process for process in reversed(self.processes) if process.alive]
        for process in live:
            process.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.popen is not None:
                process.signal_group(signal.SIGKILL)
                process.popen.wait(timeout=10)

    def process(self, name: str) -> Process:
        """The process started as `name` (the first, if it was started again)."""
        return next(p for p in self.processes if p.name == name)

    def logs(self) -> str:
        return "\n".join(f"===== {p.name}\n{p.log()[-4000:]}" for p in self.processes)


@contextlib.contextmanager
def shared_cluster(django_db_blocker, tmp_path: Path):
    """A cluster for several tests (a module's or a class's), with the database open to
    them outside pytest-django's per-test transactions: the test Redis database emptied
    and the default queue made first; afterwards its processes stopped, every table
    emptied (as a transactional test leaves them) and Redis emptied again."""
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    with django_db_blocker.unblock():
        broker.flushdb()
        Queue.objects.get_or_create(name=DEFAULT_QUEUE_NAME, defaults={"all_teams": True})
        cluster = Cluster(tmp_path)
        try:
            yield cluster
        finally:
            cluster.stop_all()
            call_command("flush", interactive=False, verbosity=0)
            broker.flushdb()
            broker.close()


def processes_matching(marker: str) -> list[str]:
    """The command lines of the processes whose command line holds `marker`."""
    found = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


def gone(pid: int) -> bool:
    """The process has ended (a zombie waiting for its parent counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] in (b"Z", b"X")


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
