"""What a job spec may hold, and whether it could ever run for a team: the caps on its
free-form parts, the callable allow-list, the queue the team may use, and a request no
node or quota could ever hold. The one check for inline jobs, definitions, and the jobs
made from definitions."""

import json

from django.conf import settings
from django.core.exceptions import ValidationError

from accounts.models import Team
from nodes.selectors import node_capacity_maxima, node_task_room
from resources.models import DEFAULT_QUEUE_NAME, Queue
from resources.selectors import queue_for_submission

from ..models import JobKind

# Caps on a spec's free-form parts, for inline jobs, definitions and the jobs made from
# them alike: each ends up in the database row and in every execution's environment.
MAX_ENV = 128
MAX_ENV_NAME_LENGTH = 256
MAX_PARAMETERS_BYTES = 64 * 1024
MAX_SELECTOR = 32


def _format_cpu(cpu_millis: int) -> str:
    cores = cpu_millis / 1000
    return f"{cores:g} CPU"


def request_fits_nowhere_error(*, cpu_millis: int, memory_mb: int, gpu: int) -> ValidationError:
    """Why no registered node could hold a request even when empty (the caller found none)."""
    largest = node_capacity_maxima()
    if largest["cpu_millis"] is None:
        return ValidationError(
            {"resources": ["No node is registered, so no node can run this job."]}
        )
    messages = []
    if cpu_millis > largest["cpu_millis"]:
        messages.append(
            f"Requests {_format_cpu(cpu_millis)}, but the largest node has "
            f"{_format_cpu(largest['cpu_millis'])}."
        )
    if memory_mb > largest["memory_mb"]:
        messages.append(
            f"Requests {memory_mb} MB of memory, but the largest node has "
            f"{largest['memory_mb']} MB."
        )
    if gpu > largest["gpu"]:
        messages.append(f"Requests {gpu} GPU, but the most any node has is {largest['gpu']}.")
    if not messages:
        messages.append(
            f"No registered node has {_format_cpu(cpu_millis)}, {memory_mb} MB of memory and "
            f"{gpu} GPU at once."
        )
    return ValidationError({"resources": messages})


def job_callable_check_allowed(name: str) -> None:
    if name not in settings.JOB_CALLABLES:
        allowed = ", ".join(settings.JOB_CALLABLES) or "none"
        raise ValidationError(
            {"callable": [f"{name!r} is not an allowed callable (allowed: {allowed})."]}
        )


def job_queue_for_team(*, team: Team, name: str, request: dict) -> Queue:
    """The queue `name`, if `team` may submit into it; the same answer for a queue that
    does not exist and one the team may not use, so names of others' queues do not leak.
    A request (resource name to amount) that no registered node could ever hold is
    refused too, from the same read."""
    queue, fits = queue_for_submission(team=team, name=name, **request)
    if queue is None:
        raise ValidationError(
            {"queue": [f"No queue named {name!r} that team {team.slug} may submit to."]}
        )
    if not fits:
        raise request_fits_nowhere_error(**request)
    return queue


def job_request_check_quota(*, queue: Queue, cpu_millis: int, memory_mb: int, gpu: int) -> None:
    """Reject a request larger than its queue's whole quota: it could never start."""
    messages = []
    if queue.quota_cpu_millis is not None and cpu_millis > queue.quota_cpu_millis:
        messages.append(
            f"Requests {_format_cpu(cpu_millis)}, but queue {queue.name} allows at most "
            f"{_format_cpu(queue.quota_cpu_millis)} at once."
        )
    if queue.quota_memory_mb is not None and memory_mb > queue.quota_memory_mb:
        messages.append(
            f"Requests {memory_mb} MB of memory, but queue {queue.name} allows at most "
            f"{queue.quota_memory_mb} MB at once."
        )
    if queue.quota_gpu is not None and gpu > queue.quota_gpu:
        messages.append(
            f"Requests {gpu} GPU, but queue {queue.name} allows at most {queue.quota_gpu} at once."
        )
    if messages:
        raise ValidationError({"resources": messages})


def job_spec_limit_errors(
    *, env: dict | None = None, parameters: dict | None = None, node_selector: dict | None = None
) -> dict[str, list[str]]:
    """What is wrong with a spec's env, parameters and node selector, by field; empty
    when nothing is. Serializers ask it field by field, services for the whole spec."""
    errors: dict[str, list[str]] = {}
    if env is not None:
        if len(env) > MAX_ENV:
            errors["env"] = [f"At most {MAX_ENV} variables."]
        else:
            for key in env:
                if not key or "=" in key or "\x00" in key or len(key) > MAX_ENV_NAME_LENGTH:
                    errors["env"] = [f"Invalid variable name: {key[:64]!r}."]
                    break
    if parameters is not None:
        if len(json.dumps(parameters)) > MAX_PARAMETERS_BYTES:
            errors["parameters"] = [f"At most {MAX_PARAMETERS_BYTES} bytes as JSON."]
        elif _contains_nul(parameters):
            errors["parameters"] = [NO_NUL]
    if node_selector is not None:
        if len(node_selector) > MAX_SELECTOR:
            errors["node_selector"] = [f"At most {MAX_SELECTOR} labels."]
        elif _contains_nul(node_selector):
            errors["node_selector"] = [NO_NUL]
    return errors


# PostgreSQL's text and jsonb cannot hold NUL; DRF's CharField refuses it, JSON keys need this.
NO_NUL = "Null characters are not allowed."


def _contains_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(v) for v in value)
    return False


def job_preemptible(preemptible: bool | None, queue: Queue) -> bool:
    """Whether a job is preemptible: as its spec says, else as its queue's default."""
    return queue.preemptible_default if preemptible is None else preemptible


def job_spec_check(*, team: Team, spec: dict) -> Queue:
    """Refuse a spec that could never run for `team`: over the caps, a callable not on
    the allow-list, a queue the team may not use, a request larger than the largest node
    or the queue's whole quota. Returns the queue `spec` names (the default when absent).
    The one check for inline jobs, definitions, and jobs made from definitions."""
    errors = job_spec_limit_errors(
        env=spec.get("env"),
        parameters=spec.get("parameters"),
        node_selector=spec.get("node_selector"),
    )
    if errors:
        raise ValidationError(errors)
    if spec.get("kind") == JobKind.CALLABLE:
        job_callable_check_allowed(spec.get("callable", ""))
    request = {"cpu_millis": spec["cpu_millis"], "memory_mb": spec["memory_mb"], "gpu": spec["gpu"]}
    queue = job_queue_for_team(
        team=team, name=spec.get("queue", DEFAULT_QUEUE_NAME), request=request
    )
    job_request_check_quota(queue=queue, **request)
    tasks = spec.get("tasks", 1)
    if tasks > 1:
        gang_check(queue=queue, tasks=tasks, request=request, selector=spec.get("node_selector"))
    return queue


def gang_check(*, queue: Queue, tasks: int, request: dict, selector: dict | None) -> None:
    """Refuse a gang that could never start: more tasks than the registered nodes could
    hold at once, or more than its queue's quota allows at once."""
    room = node_task_room(**request, node_selector=selector or {})
    if room < tasks:
        raise ValidationError(
            {
                "tasks": [
                    f"{tasks} tasks of {_format_cpu(request['cpu_millis'])}, "
                    f"{request['memory_mb']} MB and {request['gpu']} GPU each cannot all run "
                    f"at once: the registered nodes hold at most {room} of them."
                ]
            }
        )
    try:
        job_request_check_quota(queue=queue, **{k: v * tasks for k, v in request.items()})
    except ValidationError as exc:
        raise ValidationError(
            {"tasks": [f"All {tasks} tasks together: {m}" for m in exc.message_dict["resources"]]}
        ) from None
