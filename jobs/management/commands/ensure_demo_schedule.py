"""`manage.py ensure_demo_schedule`: one sample schedule for a fresh platform (idempotent)."""

from django.core.management.base import BaseCommand, CommandError

from accounts.models import Team
from jobs.models import JobDefinition, JobSchedule
from jobs.schedule_times import describe
from jobs.schedules import schedule_create
from resources.models import DEFAULT_QUEUE_NAME, Queue

DEFINITION = "echo-time"
SCHEDULE = "demo-every-minute"


class Command(BaseCommand):
    help = "Create the demo schedule (an echo every 60 seconds) unless it exists; print it."

    def add_arguments(self, parser):
        parser.add_argument("--team", default="demo")

    def handle(self, *args, team, **options):
        team_obj = Team.objects.filter(slug=team).first()
        if team_obj is None:
            raise CommandError(f"No team {team!r}; run ensure_admin first.")
        definition, _ = JobDefinition.objects.get_or_create(
            team=team_obj,
            name=DEFINITION,
            defaults={
                "command": ["sh", "-c", "echo scheduled run at $(date -u +%H:%M:%S) on $NODE_NAME"],
                "cpu_millis": 250,
                "memory_mb": 64,
                "queue": Queue.objects.get(name=DEFAULT_QUEUE_NAME),
            },
        )
        schedule = JobSchedule.objects.filter(team=team_obj, name=SCHEDULE).first()
        if schedule is None:
            schedule = schedule_create(
                team=team_obj,
                definition=definition,
                fields={"name": SCHEDULE, "interval_seconds": 60},
            )
        state = "enabled" if schedule.enabled else "paused"
        self.stdout.write(
            f"schedule {schedule.pk} {schedule.name}: {describe(schedule)}, runs definition "
            f"{definition.name}, {state}; next at {schedule.next_fire_at:%Y-%m-%d %H:%M:%S} UTC"
        )
