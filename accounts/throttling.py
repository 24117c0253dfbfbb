"""Request rates per user, per credential and per address, counted in Redis.

Each throttle counts requests in fixed windows (one atomic INCR per request), so every
web worker shares the same count. Rates come from `API_THROTTLE_RATES`, read on each
request, e.g. "600/minute"; an empty rate turns a throttle off. When Redis cannot be
reached the request is let through: the broker's Redis is disposable, the API is not.
"""

import logging
import re
import time

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from redis.exceptions import RedisError
from rest_framework.throttling import BaseThrottle

logger = logging.getLogger(__name__)

PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])[a-z]*\s*$")


def parse_rate(rate: str) -> tuple[int, int]:
    """(requests, seconds) from "100/minute", "5/s", "1000/hour", "10000/day" or "3/5s"."""
    match = RATE_RE.match(rate)
    if match is None:
        raise ImproperlyConfigured(f"Bad throttle rate {rate!r}; e.g. 600/minute or 3/5s.")
    number, multiple, period = match.groups()
    return int(number), int(multiple or 1) * PERIODS[period]


class WindowThrottle(BaseThrottle):
    scope = ""

    def identity(self, request) -> str | None:
        """Who is counted; None when this throttle does not apply to the request."""
        raise NotImplementedError

    def allow_request(self, request, view) -> bool:
        rate = settings.API_THROTTLE_RATES.get(self.scope)
        who = self.identity(request) if rate else None
        if who is None:
            return True
        limit, seconds = parse_rate(rate)
        now = time.time()
        window = int(now // seconds)
        self.retry_after = (window + 1) * seconds - now
        key = f"throttle:{self.scope}:{who}:{seconds}:{window}"
        try:
            cache.add(key, 0, timeout=seconds + 1)
            count = cache.incr(key)
        except (RedisError, ValueError):
            logger.warning("throttle %s not applied: its counter is unavailable", self.scope)
            return True
        return count <= limit

    def wait(self) -> float:
        return self.retry_after


def _authenticated(request) -> bool:
    return bool(request.user and request.user.is_authenticated)


class UserThrottle(WindowThrottle):
    """All of a user's requests, whatever token or session they come with."""

    scope = "user"

    def identity(self, request):
        return str(request.user.pk) if _authenticated(request) else None


class CredentialThrottle(WindowThrottle):
    """The requests of one credential: an API token or a node's credential."""

    scope = "token"

    def identity(self, request):
        auth = request.auth
        if auth is None or getattr(auth, "pk", None) is None:
            return None
        return f"{auth._meta.label_lower}:{auth.pk}"


class AnonThrottle(WindowThrottle):
    """Requests without credentials, per address."""

    scope = "anon"

    def identity(self, request):
        if _authenticated(request) or request.auth is not None:
            return None
        return self.get_ident(request)


class LoginThrottle(WindowThrottle):
    """Login attempts per address, so passwords cannot be guessed at speed."""

    scope = "login"

    def identity(self, request):
        return self.get_ident(request)
