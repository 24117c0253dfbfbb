"""Writes for accounts: teams, memberships, API tokens and audit events."""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from .models import ApiToken, AuditEvent, AuditOutcome, Membership, Role, Team, User

TOKEN_PREFIX_BYTES = 6
TOKEN_SECRET_BYTES = 32


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    key: str  # the only time the whole key exists outside the client


def secret_key_generate() -> tuple[str, str]:
    """A new `<prefix>.<secret>` key and its prefix. Store the prefix (to find the row)
    and `secret_key_digest(key)`, never the key."""
    prefix = secrets.token_hex(TOKEN_PREFIX_BYTES)
    return prefix, f"{prefix}.{secrets.token_urlsafe(TOKEN_SECRET_BYTES)}"


def secret_key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def secret_key_matches(*, digest: str, key: str) -> bool:
    return hmac.compare_digest(digest, secret_key_digest(key))


def api_token_issue(*, user: User, name: str, expires_at: datetime | None = None) -> IssuedToken:
    prefix, key = secret_key_generate()
    token = ApiToken.objects.create(
        user=user, name=name, prefix=prefix, digest=secret_key_digest(key), expires_at=expires_at
    )
    return IssuedToken(token=token, key=key)


def api_token_verify(key: str) -> ApiToken | None:
    """The live token for `key`, or None if it is unknown, revoked or expired."""
    prefix, _, _secret = key.partition(".")
    token = (
        ApiToken.objects.select_related("user")
        .filter(prefix=prefix, revoked_at__isnull=True)
        .first()
    )
    if token is None or not secret_key_matches(digest=token.digest, key=key):
        return None
    now = timezone.now()
    if token.expires_at is not None and token.expires_at <= now:
        return None
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        # Recorded at most once a minute so authentication stays a single read.
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


def api_token_revoke(*, token: ApiToken) -> None:
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


@transaction.atomic
def team_add_member(*, team: Team, user: User, role: str = Role.MEMBER) -> Membership:
    membership, _ = Membership.objects.update_or_create(
        team=team, user=user, defaults={"role": role}
    )
    return membership


def audit_event_record(
    *,
    action: str,
    actor: User | None = None,
    actor_name: str = "",
    token: ApiToken | None = None,
    outcome: str = AuditOutcome.SUCCEEDED,
    status_code: int | None = None,
    object_type: str = "",
    object_id: str = "",
    object_repr: str = "",
    team_id: int | None = None,
    remote_addr: str | None = None,
    method: str = "",
    path: str = "",
    change: dict | None = None,
) -> AuditEvent:
    """Write one audit event. `change` must already be redacted (see accounts.audit)."""
    return AuditEvent.objects.create(
        action=action[:100],
        actor=actor,
        actor_name=(actor_name or (actor.get_username() if actor is not None else ""))[:150],
        token=token,
        outcome=outcome,
        status_code=status_code,
        object_type=object_type[:100],
        object_id=str(object_id)[:100],
        object_repr=object_repr[:200],
        team_id=team_id,
        remote_addr=remote_addr,
        method=method[:8],
        path=path[:255],
        change=change or {},
    )
