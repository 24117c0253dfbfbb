"""`manage.py run_scheduler`: the placement loop (one leader among any number)."""

from django.conf import settings
from django.core.management.base import BaseCommand

from jobs.management.metrics_port import add_metrics_arguments, serve_metrics
from jobs.scheduling.leader import Scheduler


class Command(BaseCommand):
    help = "Run the scheduler: place pending jobs on nodes with free capacity."

    def add_arguments(self, parser):
        add_metrics_arguments(parser, "scheduler")

    def handle(self, *args, metrics_port, metrics_address, **options):
        scheduler = Scheduler(
            tick_seconds=settings.SCHEDULER_TICK_SECONDS,
            batch_size=settings.SCHEDULER_BATCH_SIZE,
        )
        serve_metrics(self, scheduler.metrics.serve, port=metrics_port, address=metrics_address)
        scheduler.install_signal_handlers()
        scheduler.run()
