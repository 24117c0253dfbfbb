"""Settings for the test suite and for the processes it starts.

The suite uses its own Redis database and pytest-django's own PostgreSQL database, so
it can run beside a platform started with scripts/up. Intervals are shortened here,
through settings, not by patching code.
"""

import os

os.environ.setdefault("SECRET_KEY", "tests-only-not-secret")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("SCHEDULER_TICK_SECONDS", "1")
os.environ.setdefault("NODE_HEARTBEAT_SECONDS", "1")
os.environ.setdefault("EXECUTION_DISPATCH_TIMEOUT_SECONDS", "3")
os.environ.setdefault("RECONCILE_INTERVAL_SECONDS", "1")
os.environ.setdefault("DEADLINE_CHECK_SECONDS", "1")
os.environ.setdefault("NODE_LOST_AFTER_SECONDS", "5")
os.environ.setdefault("NODE_LOST_CHECK_SECONDS", "1")
os.environ.setdefault("JOB_LOG_MAX_BYTES", "1048576")
os.environ.setdefault("JOB_KILL_GRACE_SECONDS", "1")
os.environ.setdefault("DB_CONN_MAX_AGE", "0")
# Every test client comes from 127.0.0.1; the login throttle is tested with its own rates.
os.environ.setdefault("API_THROTTLE_LOGIN", "10000/minute")
os.environ.setdefault("ALERT_EVALUATE_SECONDS", "1")
os.environ.setdefault("METRICS_FOLD_SECONDS", "1")
os.environ.setdefault("ALERT_DELIVERY_BACKOFF_SECONDS", "0.5")
# The test database's tables keep the statistics the EXPLAIN tests plan against (none);
# tests/jobs/scheduling/test_leader.py analyzes a table of its own choosing.
os.environ.setdefault("SCHEDULER_ANALYZE_SECONDS", "0")

from scheduler_site.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast; tests only
WHITENOISE_AUTOREFRESH = True  # no collectstatic in tests: static files come from
WHITENOISE_USE_FINDERS = True  # the apps, as with runserver
