"""deploy/systemd/: a unit for each process in README's "Processes", which systemd accepts
and which passes its commands only options they take."""

import re
import shlex
import shutil
import subprocess

import pytest
from django.core.management import load_command_class

from tests.deploy.metrics import DEPLOY_DIR

SYSTEMD_DIR = DEPLOY_DIR / "systemd"

# Unit file: what its ExecStart runs.
UNITS = {
    "scheduler-web.service": "gunicorn scheduler_site.wsgi",
    "scheduler-scheduler.service": "manage.py run_scheduler",
    "scheduler-node@.service": "manage.py run_node --name %i",
    "scheduler-beat.service": "celery -A scheduler_site beat",
    "scheduler-control.service": "celery -A scheduler_site worker -Q control",
    "scheduler-flower.service": "celery -A scheduler_site flower",
}


def directives(unit: str) -> list[tuple[str, str]]:
    """(key, value) pairs of a unit file, with continued lines joined."""
    text = (SYSTEMD_DIR / unit).read_text().replace("\\\n", " ")
    pairs = []
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            pairs.append((key.strip(), " ".join(value.split())))
    return pairs


def exec_start(unit: str) -> str:
    return next(value for key, value in directives(unit) if key == "ExecStart")


def test_every_process_has_a_unit_that_reads_the_environment_file_and_restarts_on_failure():
    for unit, command in UNITS.items():
        values = directives(unit)
        assert command in exec_start(unit), unit
        # A node agent's has no database settings (run_node refuses them).
        env_file = "node.env" if unit == "scheduler-node@.service" else "env"
        assert ("EnvironmentFile", f"/etc/scheduler/{env_file}") in values, unit
        assert ("Restart", "on-failure") in values, unit


def test_the_target_starts_the_control_plane():
    wanted = " ".join(value for key, value in directives("scheduler.target") if key == "Wants")
    assert sorted(wanted.split()) == sorted(u for u in UNITS if u != "scheduler-node@.service")


def test_systemd_accepts_the_units(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    for path in SYSTEMD_DIR.glob("scheduler*"):
        shutil.copy(path, tmp_path / path.name)
    result = subprocess.run(
        ["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.iterdir())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # The one complaint expected here: the install directory of the units is not this one.
    not_installed = re.compile(r"Command /opt/scheduler/\.venv/bin/\w+ is not executable")
    complaints = [
        line for line in result.stderr.splitlines() if line and not not_installed.search(line)
    ]
    assert complaints == [], result.stderr


@pytest.mark.parametrize(
    ("unit", "command"),
    [("scheduler-scheduler.service", "run_scheduler"), ("scheduler-node@.service", "run_node")],
)
def test_the_units_pass_only_options_their_command_takes(unit, command):
    parser = load_command_class("jobs", command).create_parser("manage.py", command)
    given = {arg for arg in shlex.split(exec_start(unit)) if arg.startswith("--")}
    assert "--metrics-port" in given
    assert given <= parser._option_string_actions.keys()
