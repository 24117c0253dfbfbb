"""A job's page: its fields, attempts, timeline, log (followed live while an attempt
runs), the "why is it waiting" panel, and its actions: cancel, hold, release, requeue,
acknowledge, submit again (changing a pending job has a page of its own, job_change)."""

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from events.selectors import event_list_visible

from ..log_reading import LIVE_EXECUTION_STATUSES, attempt_log
from ..models import Job, JobStatus
from ..selectors import execution_list_for_job, job_list_visible
from ..services.actions import (
    job_acknowledge,
    job_cancel,
    job_hold,
    job_hold_refusal,
    job_release,
    job_release_refusal,
    job_requeue,
)
from ..services.arrays import array_cancel, array_retry
from ..services.changes import job_change_refusal
from ..why_pending import job_why_pending
from .common import act_and_tell, require_may_change, submittable_team_ids

TIMELINE_EVENTS = 200
# Parts of the why answer the panel shows in their own way; every other key (those that
# other features add) is shown as it comes.
WHY_SHOWN_APART = ("job", "status", "pending", "summary", "nodes", "waits_on")
# The page shows the end of a long log; the whole of it is at the API.
LOG_SHOWN_CHARS = 64 * 1024


def job_visible_or_404(request, pk):
    jobs = (
        job_list_visible(user=request.user)
        .select_related("workflow_step__workflow")
        .prefetch_related("retries")
    )
    return get_object_or_404(jobs, pk=pk)


@login_required
def job_page(request, pk):
    job = job_visible_or_404(request, pk)
    executions = list(execution_list_for_job(job=job))
    latest = executions[-1] if executions else None
    following = latest is not None and latest.status in LIVE_EXECUTION_STATUSES
    log = ""
    if latest is not None and not following:
        log = "".join(attempt_log(execution=latest))[-LOG_SHOWN_CHARS:]
    elif latest is not None:
        log = latest.log_tail
    why = job_why_pending(job=job) if job.status == JobStatus.PENDING else None
    context = {
        "job": job,
        "executions": executions,
        "latest": latest,
        "following": following,
        "log": log,
        "why": why,
        "why_more": why and {k: v for k, v in why.items() if k not in WHY_SHOWN_APART},
        "timeline": event_list_visible(user=request.user)
        .filter(job_id=job.pk)
        .order_by("at", "id")[:TIMELINE_EVENTS],
        "may_act": job.team_id in submittable_team_ids(request.user),
        "may_hold": job_hold_refusal(job) is None,
        "may_release": job_release_refusal(job) is None,
        "may_change": job_change_refusal(job) is None,
        "live": job.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
        or job.cancel_requested_at is not None,
    }
    if request.GET.get("fragment") == "live":
        return render(request, "jobs/_job_live.html", context)
    return render(request, "jobs/job_page.html", context)


def _act(request, pk, change, done: str):
    job = job_visible_or_404(request, pk)
    require_may_change(request.user, job.team_id)
    try:
        act_and_tell(request, lambda: change(job, request.user), done)
    except Job.DoesNotExist:  # gone since it was read (purged by retention)
        raise Http404("No such job.") from None
    return redirect(reverse("job-page", args=[job.pk]))


def _cancel(job, user):
    if job.array_count is not None:
        return array_cancel(array=job, user=user)
    return job_cancel(job=job, user=user)


def _requeue(job, user):
    if job.array_count is not None:
        return array_retry(array=job, failed_only=False, user=user)
    if job.array_parent_id is not None:
        return array_retry(array=job.array_parent, task=job, user=user)
    return job_requeue(job=job, user=user)


@login_required
@require_POST
def job_cancel_view(request, pk):
    return _act(request, pk, _cancel, "Cancel asked.")


@login_required
@require_POST
def job_requeue_view(request, pk):
    return _act(request, pk, _requeue, "Requeued as its next attempt.")


@login_required
@require_POST
def job_acknowledge_view(request, pk):
    return _act(
        request,
        pk,
        lambda job, user: job_acknowledge(job=job, user=user),
        "Acknowledged: out of the dead-letter view.",
    )


@login_required
@require_POST
def job_hold_view(request, pk):
    return _act(
        request,
        pk,
        lambda job, user: job_hold(job=job, user=user),
        "Held: it does not start until released.",
    )


@login_required
@require_POST
def job_release_view(request, pk):
    return _act(request, pk, lambda job, user: job_release(job=job, user=user), "Released.")
