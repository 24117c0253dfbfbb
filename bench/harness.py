"""What the benches share: a database and Redis database of their own, processes started
with their settings and logs in a scratch directory, polling and percentiles."""

import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent


def redis_url(db: int) -> str:
    """Database `db` of the Redis the environment's broker URL names (default local)."""
    broker = urlsplit(os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
    return f"redis://{broker.hostname or '127.0.0.1'}:{broker.port or 6379}/{db}"


class Bench:
    """A bench's own PostgreSQL database and Redis database, set in this process's
    environment (for Django) and in that of every process it starts."""

    def __init__(self, name: str, redis_db: int, **env: str):
        self.db_name = f"scheduler_bench_{name}"
        self.broker_url = redis_url(redis_db)
        self.work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "scheduler_site.settings",
            "SECRET_KEY": "bench-only",
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{self.db_name}",
            "CELERY_BROKER_URL": self.broker_url,
            "CACHE_URL": redis_url(redis_db + 1 if redis_db < 15 else redis_db),
            "NODE_WORK_DIR": str(self.work / "work"),
            "JOB_LOG_DIR": str(self.work / "logs"),
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
            **env,
        }
        os.environ.update(self.env)
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))

    def psql(self, sql: str) -> None:
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", sql],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def create_database(self) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {self.db_name} WITH (FORCE)")
        self.psql(f"CREATE DATABASE {self.db_name}")

    def set_up(self):
        """A new database with the migrations applied, Django set up on it, and the
        bench's Redis database emptied; returns a client of that Redis database."""
        self.create_database()
        import django

        django.setup()
        import redis
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        broker = redis.Redis.from_url(self.broker_url)
        broker.flushdb()
        return broker

    def drop_database(self) -> None:
        """Unless BENCH_KEEP_DATABASE=1, to look into afterwards (dropped at the next run)."""
        if os.environ.get("BENCH_KEEP_DATABASE") == "1":
            return
        self.psql(f"DROP DATABASE IF EXISTS {self.db_name} WITH (FORCE)")

    def start(
        self, name: str, argv: list[str], env: dict | None = None, *, database: bool = True
    ) -> subprocess.Popen:
        """A process with the bench's environment, `env` on top; without `database`, no
        DATABASE_URL (a node agent refuses to start with one)."""
        process_env = {**self.env, **(env or {})}
        if not database:
            del process_env["DATABASE_URL"]
        log = (self.work / f"{name}.log").open("wb")
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env=process_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_node_agent(self, name: str, argv: list[str], port: int = 8799) -> list:
        """A node agent as in production: no database, a key of its node's, and a web
        server of its own on `port` to talk to (started here). Returns both processes;
        call after set_up. `argv` has `--name NODE` or `--name=NODE`."""
        from nodes.services import node_credential_issue

        node_name = next(
            a.split("=", 1)[1] if "=" in a else argv[i + 1]
            for i, a in enumerate(argv)
            if a.startswith("--name")
        )
        web = self.start(f"{name}-api", gunicorn_argv(port))
        wait_for(lambda: listening(port), 60, "the node agent's web server", 0.2)
        env = {k: v for k, v in self.env.items() if k != "DATABASE_URL"}
        env["SCHEDULER_API_URL"] = f"http://127.0.0.1:{port}"
        env["NODE_KEY"] = node_credential_issue(node_name=node_name)[1]
        log = (self.work / f"{name}.log").open("wb")
        node = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return [web, node]


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def stop(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in processes:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent busy since boot, all cores together (from
    /proc/stat: user, nice, system, irq and softirq; not idle, I/O wait or steal)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def gunicorn_argv(port: int) -> list[str]:
    """The web process as scripts/up starts it: 2 workers of threads."""
    return [
        str(Path(sys.executable).parent / "gunicorn"),
        "scheduler_site.wsgi",
        f"--bind=127.0.0.1:{port}",
        "--workers=2",
        "--worker-class=gthread",
        "--threads=16",
    ]


def http_get(port: int, path: str, headers: dict) -> tuple[int, bytes]:
    """One GET on a connection of its own; the status and the body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()
