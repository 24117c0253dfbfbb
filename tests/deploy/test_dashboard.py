"""deploy/grafana/dashboard.json: a dashboard Grafana can import, whose queries parse and
read only the metrics the platform exports."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.metrics import DEPLOY_DIR, EXPORTED_METRICS, metric_names, promtool

# Grafana's variables, replaced by values of the same kind, so promtool can parse a query.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "6h",
    "$queue": ".*",
    "$node": ".*",
}


def dashboard() -> dict:
    return json.loads((DEPLOY_DIR / "grafana" / "dashboard.json").read_text())


def graph_panels() -> list[dict]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel query and every query variable."""
    found = [
        (f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"])
        for panel in graph_panels()
        for target in panel["targets"]
    ]
    found += [
        (f"variable {variable['name']}", variable["query"]["query"])
        for variable in dashboard()["templating"]["list"]
        if variable["type"] == "query"
    ]
    return found


def test_it_has_the_fields_grafana_requires():
    board = dashboard()
    assert board["title"]
    assert board["uid"]
    assert 36 <= board["schemaVersion"] <= 41
    assert isinstance(board["templating"]["list"], list)
    assert board["panels"]
    for panel in board["panels"]:
        assert isinstance(panel["id"], int)
        assert panel["type"]
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= grid.keys(), panel["id"]
        assert grid["x"] + grid["w"] <= 24, panel["id"]
    for panel in graph_panels():
        assert panel["title"]
        assert panel["targets"], panel["id"]
        for target in panel["targets"]:
            assert target["expr"] and target["refId"], panel["id"]


def test_panel_ids_are_unique():
    ids = [panel["id"] for panel in dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_it_queries_through_the_datasource_variable():
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in graph_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["id"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["id"]


def test_every_query_reads_only_exported_metrics():
    for where, expr in expressions():
        names = metric_names(expr)
        assert names, f"{where} reads no scheduler metric: {expr}"
        assert names <= set(EXPORTED_METRICS), f"{where} reads {names - set(EXPORTED_METRICS)}"


def test_it_shows_every_exported_metric():
    shown = set().union(*(metric_names(expr) for _, expr in expressions()))
    assert sorted(set(EXPORTED_METRICS) - shown) == []


def test_every_panel_query_parses(tmp_path):
    # promtool parses PromQL only in rule files: each query becomes a recording rule.
    rules = []
    for panel in graph_panels():
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"panel {panel['id']}: a variable the test does not know"
            rules.append(
                {"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": expr}
            )
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


SCHEMA_DIR = Path(__file__).resolve().parent / "grafana_schema"


def test_the_dashboard_is_a_dashboard_by_grafanas_own_published_types(tmp_path):
    """Type-checks the dashboard, as a literal, against `Dashboard` of the @grafana/schema
    npm package (tests/deploy/grafana_schema; scripts/test installs it)."""
    tsc = SCHEMA_DIR / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        pytest.fail("@grafana/schema is missing: scripts/test installs it (ensure_grafana_schema)")
    (tmp_path / "node_modules").symlink_to(SCHEMA_DIR / "node_modules")
    shutil.copy(SCHEMA_DIR / "AsJson.ts", tmp_path)
    (tmp_path / "check.ts").write_text(
        "import type { Dashboard } from '@grafana/schema';\n"
        "import type { AsJson } from './AsJson';\n\n"
        f"const dashboard = {json.dumps(dashboard(), indent=2)} as const;\n\n"
        "export const checked: AsJson<Dashboard> = dashboard;\n"
    )
    checked = subprocess.run(
        [
            str(tsc),
            "--strict",
            "--noEmit",
            "--skipLibCheck",
            "--target",
            "es2020",
            "--moduleResolution",
            "node",
            str(tmp_path / "check.ts"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout[-3000:]
