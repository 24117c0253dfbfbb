"""The web UI: a dashboard of nodes and recent jobs, and a page per job."""

from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.shortcuts import get_object_or_404, render

from nodes.selectors import node_list

from .selectors import execution_list_for_job, job_list_visible

RECENT_JOBS = 50


@login_required
def dashboard(request):
    jobs = job_list_visible(user=request.user)
    counts = dict(jobs.order_by().values_list("status").annotate(n=Count("id")))
    return render(
        request,
        "jobs/dashboard.html",
        {"nodes": node_list(), "jobs": jobs[:RECENT_JOBS], "counts": counts},
    )


@login_required
def job_detail(request, pk):
    job = get_object_or_404(job_list_visible(user=request.user), pk=pk)
    return render(
        request,
        "jobs/job_detail.html",
        {"job": job, "executions": execution_list_for_job(job=job)},
    )
