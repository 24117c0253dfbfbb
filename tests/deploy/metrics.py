"""The metric names the platform exports, for checking deploy/ against them.

One list, from DESIGN.md ("Second wave: Metrics"): GET /metrics and the processes'
--metrics-port. Reconcile it with the exporter when either changes.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"

EXPORTED_METRICS = [
    "scheduler_jobs",
    "scheduler_pending_jobs",
    "scheduler_oldest_pending_job_age_seconds",
    "scheduler_jobs_finished_total",
    "scheduler_job_wait_seconds",
    "scheduler_job_run_seconds",
    "scheduler_node_up",
    "scheduler_node_capacity",
    "scheduler_node_allocated",
    "scheduler_node_used",
    "scheduler_queue_allocated",
    "scheduler_queue_quota",
    "scheduler_queue_past_share",
    "scheduler_team_past_share",
    "scheduler_dead_letter_jobs",
    "scheduler_retries_total",
    "scheduler_nodes_lost_total",
    "scheduler_cycle_duration_seconds",
    "scheduler_placements_total",
    "scheduler_preemptions_total",
    "scheduler_leader",
    "scheduler_schedule_lateness_seconds",
    "scheduler_schedule_runs_total",
]

HISTOGRAMS = {
    "scheduler_job_wait_seconds",
    "scheduler_job_run_seconds",
    "scheduler_cycle_duration_seconds",
    "scheduler_schedule_lateness_seconds",
}

_NAME = re.compile(r"scheduler_[a-z_]+")
_HISTOGRAM_SERIES = re.compile(r"(.+)_(bucket|sum|count)$")


def metric_names(expr: str) -> set[str]:
    """The scheduler metrics a PromQL expression reads, histograms by their base name."""
    names = set()
    for name in _NAME.findall(expr):
        series = _HISTOGRAM_SERIES.match(name)
        if series and series.group(1) in HISTOGRAMS:
            name = series.group(1)
        names.add(name)
    return names


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Runs promtool (Debian's prometheus package; scripts/test installs it)."""
    if shutil.which("promtool") is None:
        pytest.fail(
            "promtool is missing: scripts/test installs it (ensure_prometheus in scripts/lib.sh)"
        )
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
