"""A real Prometheus (Debian's package) scrapes the live web's /metrics with the shipped
scrape job and alert rules, and fires NodeDown when a node agent is SIGKILLed.

The rules are a copy of deploy/prometheus/rules.yml with every `for:` cut to two
seconds, so the test need not wait the shipped minutes; the shipped durations are held
by deploy/prometheus/rules_test.yml.
"""

import shutil
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.deploy.metrics import DEPLOY_DIR
from tests.processes import Process, free_port, wait_until

pytestmark = pytest.mark.e2e

SHORT_FOR = "2s"
METRICS_TOKEN = "e2e-metrics-token"


def shortened_rules(source: Path, target: Path) -> None:
    rules = yaml.safe_load(source.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = SHORT_FOR
    target.write_text(yaml.safe_dump(rules, sort_keys=False))


def scrape_config(web_address: str, token_file: Path) -> dict:
    """The shipped web scrape job, aimed at the live server, every second."""
    shipped = yaml.safe_load((DEPLOY_DIR / "prometheus" / "prometheus.yml").read_text())
    web = next(job for job in shipped["scrape_configs"] if job["job_name"] == "scheduler-web")
    web["authorization"]["credentials_file"] = str(token_file)
    web["static_configs"] = [{"targets": [web_address]}]
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [web],
    }


class Prometheus:
    def __init__(self, process: Process, url: str):
        self.process = process
        self.url = url

    def api(self, path: str, **params) -> dict:
        response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=5)
        response.raise_for_status()
        return response.json()["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def firing(self, alertname: str) -> list[dict]:
        return [
            alert
            for alert in self.api("alerts")["alerts"]
            if alert["labels"]["alertname"] == alertname and alert["state"] == "firing"
        ]

    def diagnosis(self) -> str:
        """What to read when a wait times out: the scrape's health and the server's log."""
        try:
            targets = [
                (target["scrapeUrl"], target["health"], target["lastError"])
                for target in self.api("targets")["activeTargets"]
            ]
        except requests.RequestException as exc:
            targets = exc
        return f"targets: {targets}\n{self.process.log()[-3000:]}"


@pytest.fixture
def prometheus(tmp_path, live_server, settings):
    """Prometheus on a free loopback port, with its data in tmp_path; always stopped."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: scripts/test installs it (ensure_prometheus)")
    settings.METRICS_TOKEN = METRICS_TOKEN
    home = tmp_path / "prometheus"
    home.mkdir()
    token_file = home / "scheduler-metrics-token"
    token_file.write_text(METRICS_TOKEN + "\n")
    shortened_rules(DEPLOY_DIR / "prometheus" / "rules.yml", home / "rules.yml")
    web_address = live_server.url.removeprefix("http://")
    (home / "prometheus.yml").write_text(yaml.safe_dump(scrape_config(web_address, token_file)))
    port = free_port()
    process = Process(
        "prometheus",
        [
            binary,
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=info",
        ],
        {"PATH": "/usr/bin:/bin"},
        tmp_path / "prometheus.log",
    ).start()
    server = Prometheus(process, f"http://127.0.0.1:{port}")
    try:

        def ready():
            if not process.alive:
                raise AssertionError(f"prometheus exited:\n{process.log()[-3000:]}")
            try:
                return requests.get(f"{server.url}/-/ready", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(ready, 30, interval=0.2, message="prometheus to be ready")
        yield server
    finally:
        process.stop()


def wait_for(prometheus, predicate, timeout, message):
    try:
        return wait_until(predicate, timeout, interval=0.5, message=message)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{prometheus.diagnosis()}") from None


def test_killed_node_agent_fires_node_down(cluster, prometheus):
    cluster.start_maintenance()  # node-loss detection marks the silent node offline
    node_a = cluster.start_node("node-a", cpu=1)
    up = 'scheduler_node_up{job="scheduler-web", node="node-a"}'
    wait_for(
        prometheus,
        lambda: [s["value"][1] for s in prometheus.query(up)] == ["1"],
        30,
        "Prometheus to scrape node-a up",
    )
    assert prometheus.firing("NodeDown") == []

    node_a.kill()  # SIGKILL: no goodbye, heartbeats just stop
    killed_at = time.monotonic()

    alerts = wait_for(prometheus, lambda: prometheus.firing("NodeDown"), 60, "NodeDown to fire")
    assert [alert["labels"]["node"] for alert in alerts] == ["node-a"]
    assert alerts[0]["labels"]["severity"] == "warning"
    assert alerts[0]["annotations"]["summary"] == "Node node-a is down"
    print(f"NodeDown fired {time.monotonic() - killed_at:.1f} s after the kill")
