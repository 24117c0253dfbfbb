"""`manage.py run_scheduler`: the placement loop (one leader among any number)."""

from django.conf import settings
from django.core.management.base import BaseCommand

from jobs.scheduling.leader import Scheduler


class Command(BaseCommand):
    help = "Run the scheduler: place pending jobs on nodes with free capacity."

    def handle(self, *args, **options):
        scheduler = Scheduler(
            tick_seconds=settings.SCHEDULER_TICK_SECONDS,
            batch_size=settings.SCHEDULER_BATCH_SIZE,
        )
        scheduler.install_signal_handlers()
        scheduler.run()
