"""Settings that depend on the broker: the Redis transport fix and the cache."""

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings

PRINT_BROKER_SETTINGS = (
    "import json; from scheduler_site import settings as s; print(json.dumps("
    "[getattr(s, 'CELERY_BROKER_TRANSPORT', None), s.CACHES['default']]))"
)


def broker_settings(**env: str) -> tuple[str | None, dict]:
    """The transport and cache that scheduler_site.settings makes of `env`."""
    clean = {k: v for k, v in os.environ.items() if k not in ("CACHE_URL", "CELERY_BROKER_URL")}
    result = subprocess.run(
        [sys.executable, "-c", PRINT_BROKER_SETTINGS],
        env={**clean, "SECRET_KEY": "x", **env},
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        check=True,
    )
    transport, cache = json.loads(result.stdout.strip().splitlines()[-1])
    return transport, cache


def test_it_uses_the_redis_transport_fix_and_cache_beside_a_redis_broker():
    transport, cache = broker_settings(CELERY_BROKER_URL="redis://10.0.0.5:6380/3")
    assert transport == "scheduler_site.broker:Transport"
    assert cache["LOCATION"] == "redis://10.0.0.5:6380/4"


@pytest.mark.parametrize(
    ("env", "location"),
    [
        ({}, "redis://127.0.0.1:6379/1"),
        ({"CACHE_URL": "redis://cache.example:6379/2"}, "redis://cache.example:6379/2"),
        ({"CACHE_URL": "locmem://"}, None),
    ],
)
def test_with_rabbitmq_it_uses_celerys_transport_and_a_cache_of_its_own(env, location):
    transport, cache = broker_settings(CELERY_BROKER_URL="amqp://u:p@mq.example:5672/jobs", **env)
    assert transport is None
    assert cache.get("LOCATION") == location
    if location is None:
        assert cache["BACKEND"] == "django.core.cache.backends.locmem.LocMemCache"
