"""The submit form: an inline job, or a job from a definition with overrides. The form's
fields become the API's request body and go through the API's serializers and the
submission services, so the form refuses what the API refuses, with the same messages
beside the fields."""

import json
import shlex

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.shortcuts import redirect, render
from django.urls import reverse
from rest_framework import exceptions as api_exceptions

from accounts.selectors import team_list_submittable
from resources.selectors import queue_list_visible

from ..api.specs import JobFromDefinitionSerializer, JobSubmitSerializer
from ..selectors import definition_list_visible, job_list_visible
from ..services.definitions import definition_submit
from ..services.submission import job_submit
from .common import by_form_field, field_errors, job_form_values, labels_parse

FIELDS = (
    "team",
    "name",
    "command",
    "cpu",
    "memory_mb",
    "gpu",
    "tasks",
    "queue",
    "priority",
    "preemptible",
    "max_retries",
    "timeout_seconds",
    "cpu_time_limit_seconds",
    "node_selector",
    "definition",
    "parameters",
)


@login_required
def job_submit_page(request):
    user = request.user
    teams = list(team_list_submittable(user=user).order_by("slug"))
    if not teams:
        raise PermissionDenied("Viewers may not submit jobs.")
    values = _initial(request) if request.method != "POST" else _posted(request)
    errors = {}
    if request.method == "POST":
        try:
            job = _submit(request, values)
        except (api_exceptions.ValidationError, DjangoValidationError) as exc:
            errors = by_form_field(field_errors(exc), FIELDS)
        except api_exceptions.PermissionDenied as exc:
            raise PermissionDenied(str(exc.detail)) from exc
        else:
            messages.success(request, f"Job {job.pk} submitted.")
            return redirect(reverse("job-page", args=[job.pk]))
    return render(
        request,
        "jobs/job_submit.html",
        {
            "values": values,
            "errors": errors,
            "teams": teams,
            "queues": queue_list_visible(user=user).order_by("name"),
            "definitions": definition_list_visible(user=user)
            .filter(team__in=teams)
            .order_by("name")[:500],
        },
        status=400 if errors else 200,
    )


def _posted(request) -> dict:
    return {name: request.POST.get(name, "").strip() for name in FIELDS}


def _initial(request) -> dict:
    """Empty with defaults, or (`?from=ID`, "submit again") the fields of a job."""
    values = dict.fromkeys(FIELDS, "")
    values.update(cpu="1", memory_mb="256", gpu="0", tasks="1", queue="default", priority="0")
    values["max_retries"] = "0"
    values["definition"] = request.GET.get("definition", "")
    source = request.GET.get("from", "")
    if source.isdecimal():
        job = job_list_visible(user=request.user).filter(pk=int(source)).first()
        if job is not None:
            asked = job_form_values(job)
            values.update({name: asked[name] for name in FIELDS if name in asked})
            values.update(
                team=job.team.slug,
                name=job.name,
                command=shlex.join(job.command),
                tasks=str(job.tasks),
                preemptible="yes" if job.preemptible else "no",
                parameters=json.dumps(job.parameters) if job.parameters else "",
                definition=str(job.definition_id or ""),
            )
    return values


def _submit(request, values: dict):
    """The job submitted, or the API's ValidationError for the form's fields."""
    user = request.user
    if values["definition"]:
        data = {"definition": values["definition"]}
        for name in ("name", "priority"):
            if values[name]:
                data[name] = values[name]
        if values["parameters"]:
            data["parameters"] = _json_field("parameters", values["parameters"])
        serializer = JobFromDefinitionSerializer(data=data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        overrides = dict(serializer.validated_data)
        definition = overrides.pop("definition")
        return definition_submit(definition=definition, overrides=overrides, user=user).job
    data = {
        "team": values["team"],
        "name": values["name"],
        "command": _command(values["command"]),
        "resources": {
            "cpu": values["cpu"],
            "memory_mb": values["memory_mb"],
            "gpu": values["gpu"],
        },
        "queue": values["queue"] or "default",
        "priority": values["priority"] or 0,
        "max_retries": values["max_retries"] or 0,
        "node_selector": labels_parse(values["node_selector"]),
    }
    if values["tasks"]:
        data["tasks"] = values["tasks"]
    if values["preemptible"]:  # else the queue's default
        data["preemptible"] = values["preemptible"] == "yes"
    for limit in ("timeout_seconds", "cpu_time_limit_seconds"):
        if values[limit]:
            data[limit] = values[limit]
    if values["parameters"]:
        data["parameters"] = _json_field("parameters", values["parameters"])
    serializer = JobSubmitSerializer(data=data, context={"request": request})
    serializer.is_valid(raise_exception=True)
    spec = dict(serializer.validated_data)
    team = spec.pop("team")
    return job_submit(team=team, spec=spec, user=user).job


def _command(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise api_exceptions.ValidationError({"command": [f"Cannot split it: {exc}."]}) from exc


def _json_field(name: str, text: str):
    try:
        return json.loads(text)
    except ValueError as exc:
        raise api_exceptions.ValidationError({name: [f"Not JSON: {exc}."]}) from exc
