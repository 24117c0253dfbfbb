"""What the audit log records, in one place: every state-changing API request (through
`AuditMiddleware`) and every admin save, delete or action (through `AuditedModelAdmin`).

Views add what only they know (the object, its team, a better action name) with
`audit_describe`; anything whose key looks secret is redacted before it is stored.
"""

import json
import logging
import re
from collections.abc import Mapping

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import DatabaseError
from rest_framework.permissions import SAFE_METHODS
from rest_framework.throttling import BaseThrottle

from .models import ApiToken, AuditOutcome, Team
from .services import audit_event_record

logger = logging.getLogger(__name__)

# Keys whose values are never stored: passwords, tokens, keys, credentials.
SECRET_KEY_PATTERN = re.compile(
    r"passw|passphrase|token|secret|api[-_]?key|private[-_]?key|credential|authoriz|cookie",
    re.IGNORECASE,
)
REDACTED = "[redacted]"
# A change larger than this as JSON keeps only its top-level keys.
MAX_CHANGE_BYTES = 16 * 1024
# Liveness, not change: a heartbeat every few seconds per node would drown the log. The
# agents' work on executions (claims, outcomes, cancel checks, log chunks) is recorded
# by the executions and their events; a row here too would add a write to every call.
UNAUDITED_ACTIONS = frozenset(
    {
        "node.heartbeat",
        "agent.claim",
        "agent.finish",
        "agent.successes",
        "agent.cancel",
        "agent.log_chunks",
    }
)


def redact(value):
    """`value` with every item under a secret-looking key replaced by "[redacted]"."""
    if isinstance(value, Mapping):
        return {
            str(key): REDACTED if SECRET_KEY_PATTERN.search(str(key)) else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _bounded(change: dict) -> dict:
    if len(json.dumps(change, default=str)) <= MAX_CHANGE_BYTES:
        return change
    return {"truncated": True, "keys": sorted(change)[:100]}


def client_address(request) -> str | None:
    """The caller's address, trusting X-Forwarded-For only as far as NUM_PROXIES says
    (the same rule the throttles use)."""
    return BaseThrottle().get_ident(request) or None


def audit_describe(
    request,
    *,
    target=None,
    team: Team | int | None = None,
    action: str | None = None,
    actor=None,
    change: dict | None = None,
    record_failure: bool = False,
) -> None:
    """Tell the audit middleware what this request is about. `target` is the model
    instance acted on; `record_failure` records the request even if it ends in a 4xx
    (a failed login)."""
    django_request = getattr(request, "_request", request)
    hints = getattr(django_request, "audit_hints", {})
    if target is not None:
        hints["target"] = target
    if team is not None:
        hints["team_id"] = team if isinstance(team, int) else team.pk
    if action is not None:
        hints["action"] = action
    if actor is not None:
        hints["actor"] = actor
    if change is not None:
        hints["change"] = change
    if record_failure:
        hints["record_failure"] = True
    django_request.audit_hints = hints


def _action_from_url_name(url_name: str, method: str) -> tuple[str, str]:
    """("job", "job.cancel") from "job-cancel"; list and detail routes by method."""
    object_type, _, suffix = url_name.partition("-")
    if suffix == "list":
        suffix = "create"
    elif suffix == "detail":
        suffix = "delete" if method == "DELETE" else "update"
    return object_type, f"{object_type}.{suffix.replace('-', '_')}"


def _outcome(status_code: int, hints: dict) -> str | None:
    if 200 <= status_code < 300:
        return AuditOutcome.SUCCEEDED
    if status_code == 403:
        return AuditOutcome.DENIED
    if status_code >= 500 or hints.get("record_failure"):
        return AuditOutcome.FAILED
    # Refused input, unknown objects and throttled calls change nothing and are not
    # a decision about authority: not recorded.
    return None


def _request_change(request, body: bytes | None) -> dict:
    if body is not None:
        try:
            data = json.loads(body)
        except ValueError:
            return {}
    elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        data = {key: values[-1] for key, values in request.POST.lists()}
    else:
        return {}
    return redact(data) if isinstance(data, Mapping) else {"body": redact(data)}


class AuditMiddleware:
    """Records every state-changing `/api/` request once the view has answered."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.method in SAFE_METHODS or not request.path.startswith("/api/"):
            return self.get_response(request)
        body = self._body_if_json(request)
        response = self.get_response(request)
        try:
            self.record(request, response, body)
        except DatabaseError:
            logger.exception(
                "could not record an audit event for %s %s", request.method, request.path
            )
        return response

    @staticmethod
    def _body_if_json(request) -> bytes | None:
        """The raw JSON body, read before the view so the view can still parse it."""
        if request.content_type != "application/json":
            return None
        length = int(request.META.get("CONTENT_LENGTH") or 0)
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if length == 0 or (limit is not None and length > limit):
            return None
        return request.body

    def record(self, request, response, body: bytes | None) -> None:
        match = request.resolver_match
        if match is None or not match.url_name:
            return
        hints = getattr(request, "audit_hints", {})
        outcome = _outcome(response.status_code, hints)
        object_type, action = _action_from_url_name(match.url_name, request.method)
        action = hints.get("action", action)
        if outcome is None or action in UNAUDITED_ACTIONS:
            return

        user = hints.get("actor") or getattr(request, "user", None)
        if user is not None and not user.is_authenticated:
            user = None
        auth = getattr(request, "auth", None)
        actor_name = getattr(auth, "audit_actor_name", "")

        data = getattr(response, "data", None)
        data = data if isinstance(data, Mapping) else {}
        target = hints.get("target")
        object_id = (
            target.pk
            if target is not None
            else next((match.kwargs[k] for k in ("pk", "name", "id") if k in match.kwargs), "")
        ) or data.get("id", "")
        object_repr = str(target) if target is not None else str(data.get("name", object_id))
        if target is not None:
            object_type = target._meta.model_name
        team_id = hints.get("team_id")
        if team_id is None and target is not None:
            team_id = target.pk if isinstance(target, Team) else getattr(target, "team_id", None)
        if (
            team_id is None
            and isinstance(data.get("team"), str)
            and outcome == AuditOutcome.SUCCEEDED
        ):
            team_id = Team.objects.filter(slug=data["team"]).values_list("pk", flat=True).first()

        change = hints["change"] if "change" in hints else _request_change(request, body)
        audit_event_record(
            action=action,
            actor=user,
            actor_name=actor_name,
            token=auth if isinstance(auth, ApiToken) else None,
            outcome=outcome,
            status_code=response.status_code,
            object_type=object_type,
            object_id=object_id,
            object_repr=object_repr,
            team_id=team_id,
            remote_addr=client_address(request),
            method=request.method,
            path=request.path,
            change=_bounded(redact(change)),
        )


def _admin_team_id(obj) -> int | None:
    return obj.pk if isinstance(obj, Team) else getattr(obj, "team_id", None)


def _record_admin(request, *, action: str, obj, change: dict) -> None:
    audit_event_record(
        action=action,
        actor=request.user,
        object_type=obj._meta.model_name,
        object_id=obj.pk,
        object_repr=str(obj),
        team_id=_admin_team_id(obj),
        remote_addr=client_address(request),
        method=request.method,
        path=request.path,
        change=_bounded(redact(change)),
    )


def _change_message(message) -> list:
    """The admin's change message: which fields changed, never their values."""
    if isinstance(message, list):
        return message
    return [str(message)] if message else []


class AuditedModelAdmin(admin.ModelAdmin):
    """Every admin add, change, delete and action also writes an AuditEvent.

    Every ModelAdmin of the project's models derives from this class (a test checks it).
    """

    def log_addition(self, request, obj, message):
        entry = super().log_addition(request, obj, message)
        _record_admin(
            request, action="admin.add", obj=obj, change={"fields": _change_message(message)}
        )
        return entry

    def log_change(self, request, obj, message):
        entry = super().log_change(request, obj, message)
        _record_admin(
            request, action="admin.change", obj=obj, change={"fields": _change_message(message)}
        )
        return entry

    def log_deletions(self, request, queryset):
        entries = super().log_deletions(request, queryset)
        for obj in queryset:
            _record_admin(request, action="admin.delete", obj=obj, change={})
        return entries

    def response_action(self, request, queryset):
        name = request.POST.get("action", "")
        response = super().response_action(request, queryset)
        # Deletions are recorded object by object by log_deletions.
        if name and name != "delete_selected" and request.POST.getlist(ACTION_CHECKBOX_NAME):
            audit_event_record(
                action=f"admin.action.{name}"[:100],
                actor=request.user,
                object_type=self.model._meta.model_name,
                remote_addr=client_address(request),
                method=request.method,
                path=request.path,
                change={"selected": request.POST.getlist(ACTION_CHECKBOX_NAME)[:1000]},
            )
        return response


def record_session_login(sender, request, user, **kwargs):
    """A browser or admin login (`user_logged_in`); API logins go through the middleware."""
    audit_event_record(
        action="auth.session_login",
        actor=user,
        object_type=user._meta.model_name,
        object_id=user.pk,
        object_repr=user.get_username(),
        remote_addr=client_address(request) if request is not None else None,
        method=getattr(request, "method", None) or "",
        path=getattr(request, "path", ""),
    )


def record_session_login_failure(sender, credentials, request=None, **kwargs):
    """A refused browser or admin login (`user_login_failed`); the API's own are recorded
    by the middleware, with the same action."""
    if request is None or request.path.startswith("/api/"):
        return
    audit_event_record(
        action="auth.login_failed",
        outcome=AuditOutcome.FAILED,
        remote_addr=client_address(request),
        method=request.method or "",
        path=request.path,
        change={"username": str(credentials.get("username", ""))[:150]},
    )
