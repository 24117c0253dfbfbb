"""The scheduler's wake-up: a NOTIFY on the channel the scheduler's leader LISTENs on.

Any app whose change may let a job start (a submission, a node or queue change) calls
`scheduler_wake`; a NOTIFY sent inside a transaction is delivered only when it commits,
so the scheduler never wakes before the data it should see. A finish, which holds its
node's row, calls `wake_after_commit` instead.
"""

from django.db import transaction

SCHEDULER_CHANNEL = "scheduler_wakeup"

# The wake-up of a submission. Every other wake-up says nothing: it may mean room.
ARRIVAL = "arrival"

# The wake-up, delivered when the transaction it runs in commits.
NOTIFY_SQL = "SELECT pg_notify(%s, %s)"
# The same on its own, committed without waiting for the disk (`wake_after_commit`).
NOTIFY_NOW_SQL = "SELECT set_config('synchronous_commit', 'off', true), pg_notify(%s, %s)"


def scheduler_wake(payload: str = "") -> None:
    """Ask the scheduler for a cycle as soon as the current transaction commits."""
    with transaction.get_connection().cursor() as cursor:
        cursor.execute(NOTIFY_SQL, [SCHEDULER_CHANNEL, payload])


def wake_after_commit() -> None:
    """Ask the scheduler for a cycle once the current transaction has committed, by a
    NOTIFY of its own (at once outside a transaction). PostgreSQL commits one notifying
    transaction at a time: from just before its commit to its end it holds a lock on the
    notification queue. A transaction that holds a node's row (a finish) and notifies
    keeps that row while it waits its turn, and the scheduling cycle, which locks every
    node, waits with it. Should the process die between the commit and the NOTIFY, the
    scheduler's safety tick (SCHEDULER_TICK_SECONDS) runs the cycle; for the same reason
    this NOTIFY's own commit does not wait for its record to reach the disk, a flush it
    would otherwise cost every such finish."""
    transaction.on_commit(_wake_now)


def _wake_now() -> None:
    """The wake-up as a statement that commits on its own without waiting for the disk:
    `set_config` with is_local true applies to this statement's transaction only."""
    with transaction.get_connection().cursor() as cursor:
        cursor.execute(NOTIFY_NOW_SQL, [SCHEDULER_CHANNEL, ""])
