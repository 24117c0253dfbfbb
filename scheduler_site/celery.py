"""The Celery app shared by the scheduler, beat, the control worker and node agents."""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_site.settings")

app = Celery("scheduler_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.task_prerun.connect
@signals.task_postrun.connect
def close_old_db_connections(**kwargs) -> None:
    """Treat each task as Django treats a request: keep the thread's database connection
    for CONN_MAX_AGE, and drop it if it has failed. (Celery's own default closes it before
    and after every task, a new PostgreSQL backend per job; CELERY_DB_REUSE_MAX turns
    that off.)"""
    from django.db import close_old_connections

    close_old_connections()
