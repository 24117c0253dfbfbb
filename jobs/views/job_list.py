"""The jobs list (and the dead-letter view, the same list filtered): the API's filters
in the URL, paged by cursor, its rows refreshed in place; bulk cancel, requeue and
acknowledge."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts.selectors import team_list_visible
from resources.selectors import queue_list_visible

from ..api.jobs import JobFilter
from ..models import JobStatus
from ..selectors import job_list_visible
from ..services.actions import (
    JobStateError,
    job_acknowledge,
    job_cancel,
    job_hold,
    job_release,
    job_requeue,
)
from .common import PAGE_SIZE, back_to, field_errors, submittable_team_ids

FILTER_NAMES = (
    "status",
    "name",
    "queue",
    "team",
    "node",
    "created_after",
    "created_before",
    "dead_letter",
)
BULK_ACTIONS = {
    "cancel": job_cancel,
    "hold": job_hold,
    "release": job_release,
    "requeue": job_requeue,
    "acknowledge": job_acknowledge,
}
BULK_MAX = 500


@login_required
def job_list(request):
    user = request.user
    filters = {name: request.GET[name] for name in FILTER_NAMES if request.GET.get(name)}
    filterset = JobFilter(filters, queryset=job_list_visible(user=user))
    errors = {} if filterset.is_valid() else field_errors(_as_detail(filterset.errors))
    jobs = filterset.qs if not errors else job_list_visible(user=user).none()
    jobs = jobs.order_by("-created_at", "-id")
    after = request.GET.get("after", "")
    if after.isdecimal():
        anchor = job_list_visible(user=user).filter(pk=int(after)).values("created_at").first()
        if anchor is not None:
            moment = anchor["created_at"]
            jobs = jobs.filter(Q(created_at__lt=moment) | Q(created_at=moment, id__lt=int(after)))
    rows = list(jobs[: PAGE_SIZE + 1])
    page, more = rows[:PAGE_SIZE], len(rows) > PAGE_SIZE
    context = {
        "jobs": page,
        "next_after": page[-1].pk if more else None,
        "filters": filters,
        "errors": errors,
        "statuses": JobStatus.values,
        "teams": team_list_visible(user=user).order_by("slug"),
        "queues": queue_list_visible(user=user).order_by("name"),
        "may_act": bool(submittable_team_ids(user)),
        "dead_letter": filters.get("dead_letter") == "true",
        "query": request.GET.urlencode(),
    }
    if request.GET.get("fragment") == "rows":
        return render(request, "jobs/_job_rows.html", context)
    return render(request, "jobs/job_list.html", context)


def _as_detail(errors) -> dict:
    return {field: list(messages) for field, messages in errors.items()}


@login_required
@require_POST
def job_bulk_action(request):
    """One action on the checked jobs. A job of a team the user only views refuses the
    whole request (403, nothing changed); another team's job is not found; one in the
    wrong state is skipped, saying why."""
    user = request.user
    action = BULK_ACTIONS.get(request.POST.get("action", ""))
    if action is None:
        return HttpResponseBadRequest("Unknown action.")
    ids = [int(pk) for pk in request.POST.getlist("job") if pk.isdecimal()][:BULK_MAX]
    jobs = list(job_list_visible(user=user).filter(pk__in=ids).order_by("pk"))
    allowed = submittable_team_ids(user)
    if any(job.team_id not in allowed for job in jobs):
        raise PermissionDenied("Viewers may look at this team's jobs but not change them.")
    done, refused = 0, []
    for job in jobs:
        try:
            action(job=job, user=user)
            done += 1
        except JobStateError as exc:
            refused.append(f"job {job.pk}: {' '.join(field_errors(exc).get('status', []))}")
    if done:
        messages.success(request, f"{request.POST['action'].capitalize()}: {done} job(s).")
    for line in refused:
        messages.error(request, line)
    return redirect(back_to(request, reverse("jobs-page")))
