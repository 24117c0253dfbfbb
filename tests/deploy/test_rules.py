"""deploy/prometheus/: the configuration and the alert rules are valid, and their unit
tests pass and cover every alert both ways."""

import shutil

import yaml

from tests.deploy.metrics import DEPLOY_DIR, EXPORTED_METRICS, metric_names, promtool

PROMETHEUS_DIR = DEPLOY_DIR / "prometheus"

# The alerts issue #13 names.
ALERTS = [
    "NodeDown",
    "SchedulerNoLeader",
    "SchedulerStalled",
    "QueueBacklogOld",
    "JobFailureRateHigh",
    "DeadLettersGrowing",
    "BeatLate",
]


def load(name: str) -> dict:
    return yaml.safe_load((PROMETHEUS_DIR / name).read_text())


def alert_rules() -> list[dict]:
    return [rule for group in load("rules.yml")["groups"] for rule in group["rules"]]


def test_it_passes_promtool_check_rules():
    result = promtool("check", "rules", "rules.yml", cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_it_passes_promtool_check_config(tmp_path):
    # The bearer token file is read beside the configuration; promtool checks it exists.
    for name in ("prometheus.yml", "rules.yml"):
        shutil.copy(PROMETHEUS_DIR / name, tmp_path / name)
    (
        tmp_path / load("prometheus.yml")["scrape_configs"][0]["authorization"]["credentials_file"]
    ).write_text("token\n")
    result = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_the_rule_unit_tests_pass():
    result = promtool("test", "rules", "rules_test.yml", cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_has_every_alert_the_issue_names_with_severity_and_annotations():
    rules = alert_rules()
    assert sorted(rule["alert"] for rule in rules) == sorted(ALERTS)
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_the_rules_read_only_exported_metrics():
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= set(EXPORTED_METRICS), (rule["alert"], names - set(EXPORTED_METRICS))


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not():
    fires, stays_quiet = set(), set()
    for case in load("rules_test.yml")["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else stays_quiet).add(check["alertname"])
    assert sorted(fires) == sorted(ALERTS)
    assert sorted(stays_quiet) == sorted(ALERTS)
