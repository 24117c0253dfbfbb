"""A pending job's change form (like Slurm's `scontrol update job`). Its fields go
through the API's JobChangeSerializer and `jobs.services.changes`, so the form refuses
what `PATCH /api/jobs/{id}/` refuses, with the same messages beside the fields."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from rest_framework import exceptions as api_exceptions

from resources.selectors import queue_list_visible

from ..api.specs import JobChangeSerializer
from ..models import Job
from ..services.changes import job_change, job_change_refusal
from .common import (
    by_form_field,
    field_errors,
    job_form_values,
    labels_parse,
    require_may_change,
)
from .job_page import job_visible_or_404

# The form's fields, with their labels and keyboards; the queue is a list of its own.
FIELDS = (
    ("priority", "Priority (higher runs first)", "numeric"),
    ("cpu", "CPU (cores)", "decimal"),
    ("memory_mb", "Memory (MB)", "numeric"),
    ("gpu", "GPU", "numeric"),
    ("node_selector", "Node selector", "text"),
    ("timeout_seconds", "Timeout (seconds; empty: its queue's default)", "numeric"),
    ("cpu_time_limit_seconds", "CPU time limit (seconds, each process; empty: none)", "numeric"),
    ("max_retries", "Retries after a failed attempt", "numeric"),
    ("retry_backoff_seconds", "Retry back-off (seconds)", "numeric"),
)
NAMES = ("queue", *(name for name, _, _ in FIELDS))


@login_required
def job_change_page(request, pk):
    job = job_visible_or_404(request, pk)
    require_may_change(request.user, job.team_id)
    errors = {}
    if request.method == "POST":
        values = {name: request.POST.get(name, "").strip() for name in NAMES}
        try:
            _change(request, job, values)
        except (api_exceptions.ValidationError, DjangoValidationError) as exc:
            errors = by_form_field(field_errors(exc), NAMES)
        except Job.DoesNotExist:  # gone since it was read (purged by retention)
            raise Http404("No such job.") from None
        else:
            messages.success(request, "Changed: the scheduler looks at it again.")
            return redirect(reverse("job-page", args=[job.pk]))
    else:
        values = job_form_values(job)
    refusal = job_change_refusal(job)
    return render(
        request,
        "jobs/job_change.html",
        {
            "job": job,
            "refusal": refusal,
            "fields": [
                (name, label, keyboard, values[name], errors.get(name, []))
                for name, label, keyboard in FIELDS
            ],
            "queue": values["queue"],
            "queue_errors": errors.get("queue", []),
            "form_errors": errors.get("form", []),
            "queues": queue_list_visible(user=request.user).order_by("name"),
        },
        status=400 if errors or (refusal and request.method == "POST") else 200,
    )


def _change(request, job: Job, values: dict) -> Job:
    """The job changed as the form says (what it leaves as it was changes nothing), or
    the API's ValidationError for the form's fields."""
    data = {
        "priority": values["priority"],
        "resources": {name: values[name] for name in ("cpu", "memory_mb", "gpu")},
        "queue": values["queue"],
        "node_selector": labels_parse(values["node_selector"]),
        "timeout_seconds": values["timeout_seconds"] or None,
        "cpu_time_limit_seconds": values["cpu_time_limit_seconds"] or None,
        "max_retries": values["max_retries"],
        "retry_backoff_seconds": values["retry_backoff_seconds"],
    }
    serializer = JobChangeSerializer(data=data, partial=True)
    serializer.is_valid(raise_exception=True)
    return job_change(job=job, changes=serializer.validated_data, user=request.user)
