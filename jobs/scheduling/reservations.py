"""Reservations: what the planner needs to reserve room for a large job or a gang (when
each node's running executions end, by their time limits), and the reservation's record
on the job (its nodes and expected start, for placement on freed room and /why/).

At most one job holds a reservation at a time: writing a new one takes it from any other.
An execution counts from its start (from now if it has not started), for the time limit
the node enforces: the job's `timeout_seconds`, which submission sets from its queue's
`default_timeout_seconds` when the job gives none. A node running anything without a
limit has no expected start: no reservation goes there, and jobs wait for it as before.
"""

from collections.abc import Iterable
from datetime import UTC, datetime

from psycopg.types.json import Jsonb

from common.db import prepared_cursor, sql_literal, sql_literals
from events.models import EventType
from events.services import event_record
from resources.models import LIVE_ALLOCATION_STATUSES
from resources.placement import Plan, Release

from ..models import JobStatus, PendingReason

# The live allocations on the given nodes, with their jobs' time limits. Served by the
# allocation_live_by_node partial index.
RUNNING_SQL = f"""
SELECT a.node_id, a.cpu_millis, a.memory_mb, a.gpu, j.timeout_seconds, e.started_at
  FROM resources_allocation a
  JOIN jobs_jobexecution e ON e.id = a.execution_id
  JOIN jobs_job j ON j.id = e.job_id
 WHERE a.status IN ({sql_literals(LIVE_ALLOCATION_STATUSES)})
   AND a.node_id = ANY(%(nodes)s)
"""

# The job's reservation, taken from whichever job held one (served by the
# job_reservation_by_node partial index); that job waits for room again (a gang, for
# room for all its tasks).
RESERVATION_WRITE_SQL = f"""
UPDATE jobs_job
   SET pending_reason = CASE WHEN id = %(job)s THEN {sql_literal(PendingReason.RESERVATION)}
                             WHEN tasks > 1 THEN {sql_literal(PendingReason.GANG_DOES_NOT_FIT)}
                             ELSE {sql_literal(PendingReason.INSUFFICIENT_CAPACITY)} END,
       reservation_node_id = CASE WHEN id = %(job)s THEN %(node)s::bigint END,
       reservation_nodes = CASE WHEN id = %(job)s THEN %(nodes)s::jsonb END,
       reservation_start_at = CASE WHEN id = %(job)s THEN %(start)s::timestamptz END
 WHERE id = %(job)s
    OR (status = {sql_literal(JobStatus.PENDING)}
        AND pending_reason = {sql_literal(PendingReason.RESERVATION)})
"""


def running_releases(*, node_ids: Iterable[int], now: datetime) -> dict[int, list[Release]]:
    """For each of the nodes whose running executions all have time limits, when each
    ends at the latest (see the module's docstring); the others are left out."""
    node_ids = list(node_ids)
    releases: dict[int, list[Release]] = {node_id: [] for node_id in node_ids}
    if not node_ids:
        return releases
    with prepared_cursor() as cursor:
        cursor.execute(RUNNING_SQL, {"nodes": node_ids})
        rows = cursor.fetchall()
    unknown = set()
    for node_id, cpu, memory, gpu, timeout, started_at in rows:
        if timeout is None:
            unknown.add(node_id)
            continue
        start = now if started_at is None else started_at
        releases[node_id].append(Release(start.timestamp() + timeout, cpu, memory, gpu))
    for node_id in unknown:
        del releases[node_id]
    return releases


def reservation_write(*, plan: Plan, held: dict[int, tuple], team_ids: dict[int, int]) -> None:
    """Record the plan's reservation on its job, if it is new or has moved (`held`: job id
    -> the (reason, node id, start, node ids) it had), with a `job.reserved` event when the job
    did not hold it on that node before. A gang's reservation names each of its nodes."""
    reservation = plan.reservation
    if reservation is None:
        return
    job_id = reservation.job.id
    start = datetime.fromtimestamp(reservation.starts_at, tz=UTC)
    before = held.get(job_id)
    node_ids = reservation.task_node_ids
    if before == (PendingReason.RESERVATION, reservation.node.id, start, node_ids):
        return
    with prepared_cursor() as cursor:
        cursor.execute(
            RESERVATION_WRITE_SQL,
            {"job": job_id, "node": reservation.node.id, "nodes": Jsonb(node_ids), "start": start},
        )
    if before is None or before[:2] != (PendingReason.RESERVATION, reservation.node.id):
        names = [node.name for node in reservation.nodes]
        where = f"node {names[0]}" if len(names) == 1 else f"nodes {', '.join(names)}"
        event_record(
            type=EventType.JOB_RESERVED,
            team_id=team_ids[job_id],
            job_id=job_id,
            message=f"room reserved on {where}, expected start "
            f"{start.isoformat(timespec='seconds')}",
            node_id=reservation.node.id,
            data={
                "expected_start": start.isoformat(),
                "node": names[0],
                "nodes": names,
                "tasks_on": {
                    node.name: reservation.tasks_on[node.id] for node in reservation.nodes
                },
            },
        )
