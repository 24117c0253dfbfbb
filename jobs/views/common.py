"""What every page needs: who may act, the field errors of a refused form (by the job
forms' fields, too), and where to go back to after an action."""

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.utils.http import url_has_allowed_host_and_scheme
from rest_framework import exceptions as api_exceptions

from accounts.models import User
from accounts.selectors import team_list_submittable

from ..services.actions import JobStateError

# Rows per page of the lists.
PAGE_SIZE = 50


def submittable_team_ids(user: User) -> set[int]:
    return set(team_list_submittable(user=user).values_list("pk", flat=True))


def require_may_change(user: User, team_id: int) -> None:
    """A 403 unless the user may act for the team (a viewer may only look)."""
    if team_id not in submittable_team_ids(user):
        raise PermissionDenied("Viewers may look at this team's objects but not change them.")


def act_and_tell(request, change, done: str) -> None:
    """Runs `change()` and tells the user on the next page: `done`, or why the service
    refused it for the object's state."""
    try:
        change()
    except JobStateError as exc:
        messages.error(request, " ".join(field_errors(exc).get("status", [str(exc)])))
    else:
        messages.success(request, done)


def field_errors(exc: Exception) -> dict[str, list[str]]:
    """A refused form's messages by field, as the API would answer them; nested fields
    are named with dots (`resources.cpu`), errors of the whole form under `form`."""
    detail = getattr(exc, "detail", None)
    if detail is None:
        detail = getattr(exc, "message_dict", None) or {
            "form": getattr(exc, "messages", [str(exc)])
        }
    errors: dict[str, list[str]] = {}

    def walk(value, prefix):
        if isinstance(value, dict):
            for key, inner in value.items():
                name = "form" if key in ("non_field_errors", "__all__") else str(key)
                walk(inner, f"{prefix}.{name}" if prefix else name)
        elif isinstance(value, list):
            for inner in value:
                walk(inner, prefix)
        else:
            errors.setdefault(prefix or "form", []).append(str(value))

    walk(detail, "")
    return errors


def by_form_field(errors: dict[str, list[str]], fields) -> dict[str, list[str]]:
    """The API's field names as a job form's: `resources.cpu` is the form's `cpu`, and
    a message about `resources` as a whole goes beside the CPU."""
    mapped: dict[str, list[str]] = {}
    for name, messages_ in errors.items():
        field = name.removeprefix("resources.")
        if field not in fields:
            field = "cpu" if field == "resources" else "form"
        mapped.setdefault(field, []).extend(
            messages_ if field != "form" or name == "form" else [f"{name}: {m}" for m in messages_]
        )
    return mapped


def job_form_values(job) -> dict[str, str]:
    """What a job asks, as the submit and change forms write it."""
    return {
        "cpu": f"{job.cpu_millis / 1000:g}",
        "memory_mb": str(job.memory_mb),
        "gpu": str(job.gpu),
        "queue": job.queue.name,
        "priority": str(job.priority),
        "max_retries": str(job.max_retries),
        "retry_backoff_seconds": str(job.retry_backoff_seconds),
        "timeout_seconds": "" if job.timeout_seconds is None else str(job.timeout_seconds),
        "cpu_time_limit_seconds": str(job.cpu_time_limit_seconds or ""),
        "node_selector": ", ".join(f"{k}={v}" for k, v in job.node_selector.items()),
    }


def labels_parse(text: str) -> dict:
    """A node selector as a form writes it: `zone=a, disk=ssd`."""
    labels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise api_exceptions.ValidationError({"node_selector": [f"Not key=value: {item!r}."]})
        labels[key.strip()] = value.strip()
    return labels


def back_to(request, default: str) -> str:
    """The page a form came from (its `next` field), if it is on this site."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return default
