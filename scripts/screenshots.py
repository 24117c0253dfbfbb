"""The pictures of scripts/screenshots: demo data made by real processes, then one PNG
per page at 1400x900. Run through scripts/screenshots, which sets up what it needs."""

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import Bench, gunicorn_argv, stop, wait_for  # noqa: E402

BENCH = Bench("screenshots", 3)
PASSWORD = "demo-screenshots"  # noqa: S105 (a throwaway database's demo login)
MANAGE = [sys.executable, str(ROOT / "manage.py")]


def demo_data(base: str) -> dict:
    """Jobs of every kind through the API, as a team member would submit them; returns
    the ids the pictures need."""
    import requests

    from accounts.models import Role, Team, User
    from accounts.services import api_token_issue, team_add_member
    from alerts.services import alert_rule_create
    from jobs.models import Job, JobDefinition
    from jobs.schedules import schedule_create
    from resources.models import Queue

    team = Team.objects.create(name="Demo", slug="demo")
    admin = User.objects.create_user("admin", password=PASSWORD, is_staff=True)
    team_add_member(team=team, user=admin, role=Role.ADMIN)
    Queue.objects.create(name="batch", all_teams=True, weight=3, quota_cpu_millis=2000)
    headers = {"Authorization": f"Token {api_token_issue(user=admin, name='demo').key}"}

    def job(name, command, **extra):
        body = {"team": "demo", "name": name, "command": command, **extra}
        answer = requests.post(f"{base}/api/jobs/", json=body, headers=headers, timeout=30)
        answer.raise_for_status()
        return answer.json()["id"]

    for i in range(6):
        job(f"nightly-report-{i}", ["sh", "-c", f"echo building report {i}; seq 1 5; sleep 1"])
    job(
        "resize-images",
        ["sh", "-c", "echo resizing; exit 3"],
        max_retries=1,
        retry_backoff_seconds=1,
    )
    definition = JobDefinition.objects.create(
        team=team,
        queue=Queue.objects.get(name="default"),
        name="echo-time",
        command=["sh", "-c", "date; echo done"],
    )
    schedule_create(
        team=team,
        definition=definition,
        fields={"name": "weekday-mornings", "cron": "30 7 * * 1-5", "timezone": "Europe/Berlin"},
    )
    alert_rule_create(
        team=team,
        fields={"name": "failures", "condition": "job_dead_lettered"},
        channels=[{"kind": "webhook", "target": "https://example.com/hook"}],
        user=admin,
    )
    step = {"cpu": 0.5, "memory_mb": 128}
    flow = requests.post(
        f"{base}/api/workflows/",
        json={
            "team": "demo",
            "name": "nightly-etl",
            "parameters": {"day": "2030-01-01"},
            "steps": [
                {"name": "extract", "job": {"command": ["sleep", "2"], "resources": step}},
                *(
                    {
                        "name": f"transform-{part}",
                        "job": {"command": ["sleep", "300"], "resources": step},
                        "depends_on": ["extract"],
                    }
                    for part in ("orders", "users")
                ),
                {
                    "name": "load",
                    "job": {"command": ["true"], "resources": step},
                    "depends_on": ["transform-orders", "transform-users"],
                },
            ],
        },
        headers=headers,
        timeout=30,
    )
    flow.raise_for_status()
    time.sleep(8)
    running = job(
        "train-model",
        ["sh", "-c", "for i in $(seq 1 300); do echo epoch $i; sleep 1; done"],
        resources={"cpu": 2},
    )
    job("long-import", ["sleep", "300"], resources={"cpu": 2}, queue="batch")
    waiting = job("big-render", ["sleep", "5"], resources={"cpu": 3, "memory_mb": 1024})
    job("gpu-train", ["true"], node_selector={"zone": "c"})
    wait_for(lambda: Job.objects.get(pk=running).status == "running", 60, "a running job", 0.2)
    wait_for(lambda: Job.objects.get(pk=waiting).pending_reason != "", 60, "a reason", 0.2)
    time.sleep(4)
    finished = Job.objects.filter(status="succeeded").order_by("pk").first()
    return {
        "succeeded": finished.pk,
        "running": running,
        "waiting": waiting,
        "schedule": definition.schedules.get().pk,
        "workflow": flow.json()["id"],
    }


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="ui-shots-"))
    out.mkdir(parents=True, exist_ok=True)
    BENCH.set_up()
    from django.core.management import call_command
    from django.db import connections

    call_command("collectstatic", interactive=False, verbosity=0)

    from tests.processes import free_port

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # Node agents reach the control plane through a web server (each its own, here).
    processes = [
        *BENCH.start_node_agent(
            "node-a",
            [*MANAGE, "run_node", "--name=node-a", "--cpu=4", "--memory-mb=4096", "--label=zone=a"],
            port=free_port(),
        ),
        *BENCH.start_node_agent(
            "node-b",
            [*MANAGE, "run_node", "--name=node-b", "--cpu=2", "--memory-mb=2048", "--label=zone=b"],
            port=free_port(),
        ),
        BENCH.start("scheduler", [*MANAGE, "run_scheduler"]),
        BENCH.start("web", gunicorn_argv(port)),
    ]
    try:
        from nodes.models import Node

        wait_for(lambda: Node.objects.filter(status="ready").count() == 2, 60, "two nodes", 0.2)
        wait_for(lambda: _answers(base), 60, "the web process", 0.2)
        ids = demo_data(base)
        connections.close_all()
        pages = {
            "overview": "/",
            "jobs": "/jobs/",
            "dead-letters": "/jobs/?dead_letter=true",
            "job-succeeded": f"/jobs/{ids['succeeded']}/",
            "job-running": f"/jobs/{ids['running']}/",
            "job-waiting": f"/jobs/{ids['waiting']}/",
            "submit": "/jobs/new/",
            "definitions": "/definitions/",
            "schedules": "/schedules/",
            "schedule": f"/schedules/{ids['schedule']}/",
            "schedule-form": "/schedules/new/",
            "workflows": "/workflows/",
            "workflow": f"/workflows/{ids['workflow']}/",
            "nodes": "/nodes/",
            "usage": "/usage/?by=team&by=user",
            "alerts": "/alerts/",
            "audit": "/audit/",
        }
        _shoot(base, pages, out)
        _cancel_unfinished()
    finally:
        stop(processes)
        BENCH.drop_database()
    print(out)


def _cancel_unfinished() -> None:
    """Cancel the demo's jobs that have not ended, and wait for their nodes to stop the
    running ones: an agent's warm shutdown waits for its jobs, and one killed meanwhile
    leaves its jobs' cgroups behind."""
    from jobs.models import ExecutionStatus, Job, JobExecution, JobStatus
    from jobs.services.actions import job_cancel

    for job in Job.objects.filter(
        status__in=(JobStatus.PENDING, JobStatus.RESERVED, JobStatus.RUNNING)
    ):
        job_cancel(job=job, reason="the screenshots are taken")
    wait_for(
        lambda: not JobExecution.objects.filter(status=ExecutionStatus.RUNNING).exists(),
        60,
        "the running jobs to stop",
        0.2,
    )


def _shoot(base: str, pages: dict, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{base}/login/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/")
        for name, path in pages.items():
            page.goto(f"{base}{path}")
            page.wait_for_timeout(1200)  # a live log has printed some lines
            page.screenshot(path=out / f"{name}.png")
        browser.close()


def _answers(base: str) -> bool:
    import requests

    try:
        return requests.get(f"{base}/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


if __name__ == "__main__":
    main()
