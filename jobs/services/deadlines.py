"""Deadlines: a job not ended by its `deadline` is cancelled with the reason "deadline
passed": at once while pending or placed, by its node when running (an array job: all
its tasks). Beat runs the check on the control worker; the scheduling cycle, for its
part, never places a job whose deadline has passed."""

import contextlib
import logging

from django.utils import timezone

from ..models import ACTIVE_JOB_STATUSES, Job, JobStatus
from .actions import JobStateError, job_cancel
from .arrays import array_cancel

logger = logging.getLogger(__name__)

DEADLINE_PASSED = "deadline passed"
# Jobs cancelled per run of the check; the next run takes the rest.
DEADLINE_BATCH = 500


def jobs_cancel_past_deadline(*, now=None) -> int:
    """Cancel the jobs whose deadline has passed and that have not ended (nor been asked
    to stop). Returns how many it cancelled or asked to stop."""
    now = now or timezone.now()
    due = (
        Job.objects.filter(
            deadline__lte=now,
            status__in=(JobStatus.PENDING, *ACTIVE_JOB_STATUSES),
            cancel_requested_at__isnull=True,
        )
        .order_by("deadline", "id")
        .only("id", "array_count", "deadline", "status")[:DEADLINE_BATCH]
    )
    done = 0
    for job in due:
        with contextlib.suppress(JobStateError):  # it ended meanwhile
            if job.array_count is not None:
                array_cancel(array=job, reason=DEADLINE_PASSED)
            else:
                job_cancel(job=job, reason=DEADLINE_PASSED)
            done += 1
            logger.warning(
                "job deadline passed job=%s deadline=%s status=%s",
                job.id,
                job.deadline.isoformat(),
                job.status,
            )
    return done
