"""`manage.py submit_demo_jobs`: a few demo jobs for a fresh platform, optionally awaited."""

import time

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from accounts.models import Team
from jobs.models import TERMINAL_JOB_STATUSES, Job
from jobs.services.submission import job_submit

DEMO_JOBS = [
    ("hello", ["sh", "-c", "echo hello from $NODE_NAME, job $JOB_ID"], 0.5),
    ("count-to-five", ["sh", "-c", "for i in 1 2 3 4 5; do echo $i; sleep 0.2; done"], 1),
    ("python-version", ["python3", "-c", "import sys; print(sys.version)"], 1),
    ("two-cores", ["sh", "-c", "nproc; sleep 1; echo done"], 2),
    ("uname", ["uname", "-a"], 0.25),
]
DEMO_CALLABLE = ("callable-echo", "jobs.callables.echo_parameters", {"report": "daily", "rows": 3})


class Command(BaseCommand):
    help = "Submit the demo jobs (idempotent) and, with --wait, wait for them to finish."

    def add_arguments(self, parser):
        parser.add_argument("--team", default="demo")
        parser.add_argument("--wait", type=float, default=0, help="Seconds to wait for them")

    def handle(self, *args, team, wait, **options):
        team_obj = Team.objects.filter(slug=team).first()
        if team_obj is None:
            raise CommandError(f"No team {team!r}; run ensure_admin first.")
        ids = []
        for name, command, cpu in DEMO_JOBS:
            spec = {
                "name": name,
                "command": command,
                "cpu_millis": int(cpu * 1000),
                "memory_mb": 64,
                "gpu": 0,
                "idempotency_key": f"demo-{name}",
            }
            ids.append(self.submit(team_obj, spec))
        name, dotted, parameters = DEMO_CALLABLE
        ids.append(
            self.submit(
                team_obj,
                {
                    "name": name,
                    "kind": "callable",
                    "callable": dotted,
                    "parameters": parameters,
                    "cpu_millis": 250,
                    "memory_mb": 64,
                    "gpu": 0,
                    "idempotency_key": f"demo-{name}",
                },
            )
        )
        deadline = time.monotonic() + wait
        jobs = Job.objects.filter(id__in=ids)
        while time.monotonic() < deadline and jobs.exclude(status__in=TERMINAL_JOB_STATUSES):
            time.sleep(0.5)
        for job in jobs.select_related("last_execution__node").order_by("id"):
            node = job.last_execution.node.name if job.last_execution else "-"
            self.stdout.write(f"  job {job.id:>4}  {job.name:<16} {job.status:<10} on {node}")

    def submit(self, team, spec) -> int:
        try:
            return job_submit(team=team, spec=spec).job.id
        except ValidationError as exc:
            raise CommandError(f"{spec['name']}: {' '.join(exc.messages)}") from exc
