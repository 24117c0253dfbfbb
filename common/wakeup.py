"""The scheduler's wake-up: a NOTIFY on the channel the scheduler's leader LISTENs on.

Any app whose change may let a job start (a submission, a finish, a node or queue
change) calls `scheduler_wake`; a NOTIFY sent inside a transaction is delivered only
when it commits, so the scheduler never wakes before the data it should see.
"""

from django.db import transaction

SCHEDULER_CHANNEL = "scheduler_wakeup"

# The wake-up of a submission. Every other wake-up says nothing: it may mean room.
ARRIVAL = "arrival"


def scheduler_wake(payload: str = "") -> None:
    """Ask the scheduler for a cycle as soon as the current transaction commits."""
    with transaction.get_connection().cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [SCHEDULER_CHANNEL, payload])
