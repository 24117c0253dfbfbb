"""The Celery app shared by the scheduler, beat, the control worker and node agents."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_site.settings")

app = Celery("scheduler_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
