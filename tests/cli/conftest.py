"""A live platform for the `sched` tests, shared by a module's tests: a web process
(gunicorn, as scripts/up runs it), a scheduler and a node agent, a team with a member
logged in through `sched login`. Its rows are committed, so they are flushed at the end."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from accounts.models import Role, Team, User
from accounts.services import team_add_member
from tests.processes import Cluster, free_port, shared_cluster

SCHED = str(Path(sys.executable).parent / "sched")
PASSWORD = "correct horse battery"
OPERATOR = "olga"  # staff, in no team: she cordons and drains nodes


@dataclass
class Platform:
    url: str
    cluster: Cluster
    config_home: Path
    # Every token and password the tests hold: none may appear in any output.
    secrets: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHED_")}
        return {**env, "XDG_CONFIG_HOME": str(self.config_home), "NO_COLOR": "1"}

    @property
    def token(self) -> str:
        config = json.loads((self.config_home / "sched" / "config.json").read_text())
        return config["profiles"]["default"]["token"]

    def operator_env(self) -> dict:
        """SCHED_URL and SCHED_TOKEN of the staff user, logged in through the API."""
        answer = httpx.post(
            f"{self.url}/api/auth/login/",
            json={"username": OPERATOR, "password": PASSWORD},
            timeout=30,
        )
        answer.raise_for_status()
        token = answer.json()["token"]
        self.secrets.append(token)
        return {"SCHED_URL": self.url, "SCHED_TOKEN": token}

    def http(self) -> httpx.Client:
        """The API as the member, straight, to compare the command's answers with."""
        return httpx.Client(
            base_url=f"{self.url}/api/",
            headers={"Authorization": f"Token {self.token}"},
            timeout=30,
        )


def sched(platform: Platform, *args: str, env: dict | None = None, timeout: float = 90):
    """Runs the installed `sched` executable; checks no secret is in what it printed."""
    result = subprocess.run(
        [SCHED, *args],
        env={**platform.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    for secret in platform.secrets:
        assert secret not in result.stdout and secret not in result.stderr, args
    return result


def sched_json(platform: Platform, *args: str, **kwargs):
    """`sched ARGS --json`, the flag before a `--` that starts a job's command."""
    at = args.index("--") if "--" in args else len(args)
    result = sched(platform, *args[:at], "--json", *args[at:], **kwargs)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def platform(django_db_setup, django_db_blocker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("platform")
    with shared_cluster(django_db_blocker, tmp) as cluster:
        team = Team.objects.create(name="Blue", slug="blue")
        user = User.objects.create_user("alice", password=PASSWORD)
        team_add_member(team=team, user=user, role=Role.MEMBER)
        User.objects.create_user(OPERATOR, password=PASSWORD, is_staff=True)
        cluster.start_node("node-a", cpu=2, memory_mb=4096, labels={"zone": "a"})
        cluster.start_scheduler()
        port = free_port()
        cluster.start_web(port)
        platform = Platform(
            url=f"http://127.0.0.1:{port}",
            cluster=cluster,
            config_home=tmp / "config",
            secrets=[PASSWORD],
        )
        login = sched(
            platform,
            "login",
            f"--url={platform.url}",
            "--username=alice",
            f"--password={PASSWORD}",
        )
        assert login.returncode == 0, login.stderr
        platform.secrets.append(platform.token)
        yield platform
