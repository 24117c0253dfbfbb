"""Writes for accounts: teams, memberships and API tokens."""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from .models import ApiToken, Membership, Role, Team, User

TOKEN_PREFIX_BYTES = 6
TOKEN_SECRET_BYTES = 32


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    key: str  # the only time the whole key exists outside the client


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_token_issue(*, user: User, name: str, expires_at: datetime | None = None) -> IssuedToken:
    prefix = secrets.token_hex(TOKEN_PREFIX_BYTES)
    key = f"{prefix}.{secrets.token_urlsafe(TOKEN_SECRET_BYTES)}"
    token = ApiToken.objects.create(
        user=user, name=name, prefix=prefix, digest=_digest(key), expires_at=expires_at
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
    if token is None or not hmac.compare_digest(token.digest, _digest(key)):
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
