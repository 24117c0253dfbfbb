"""The SQL that moves executions, allocations and node counters: placing jobs on nodes,
claiming an execution for its node, ending successes, and releasing allocations.

Each is one statement, so it is one round trip whatever the number of rows, and each
runs inside its caller's transaction. Statuses are bound from the model enums. A node's
counters change through `_node_counters_change` alone, and the CHECK constraints on
`nodes.Node` refuse any change that would oversubscribe. Placements and claims hand back
what the node needs to run a job, as rows of CLAIMED_COLUMNS that `claimed_execution`
decodes. Callers own the locks and their order; see `jobs.services.executions`.
"""

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from django.db import connection, transaction

from common.db import prepared_cursor
from events.models import EventType
from resources.models import LIVE_ALLOCATION_STATUSES, AllocationStatus

from .models import (
    DependencyCondition,
    ExecutionStatus,
    Job,
    JobExecution,
    JobStatus,
    PendingReason,
)

logger = logging.getLogger(__name__)

# What the node needs of a job to run it (and to name it in its task events).
JOB_RUN_FIELDS = (
    "name",
    "kind",
    "command",
    "callable",
    "env",
    "parameters",
    "cpu_millis",
    "memory_mb",
    "gpu",
    "timeout_seconds",
    "cpu_time_limit_seconds",
    "tasks",
)
_JSON_RUN_FIELDS = {"command", "env", "parameters"}

# The row of a claimed execution, as placements and claims return it: its task's index
# and the addresses of its gang's nodes in task order (JOB_TASK_NODES), and last, whether
# jobs wait for this one to start, so the claim's caller asks no second question to know
# whether it has dependents to release.
CLAIMED_COLUMNS = (
    "execution_id",
    "job_id",
    "attempt",
    "token",
    "node_id",
    "task_index",
    *JOB_RUN_FIELDS,
    "task_nodes",
    "releases_on_start",
)
# A node's address, or its name when it registered none.
NODE_ADDRESS_SQL = "coalesce(nullif({n}.address, ''), {n}.name)"


def _job_run_columns(execution: str) -> str:
    """The columns after CLAIMED_COLUMNS' node_id, for `execution` (an alias with job_id,
    attempt, node_id, task_index) and its job `j`. A gang's other executions are read
    from the table: a gang is claimed task by task, never where it is placed."""
    own_address = NODE_ADDRESS_SQL.format(n="n")
    return (
        f"{execution}.task_index, "
        + ", ".join(f"j.{name}" for name in JOB_RUN_FIELDS)
        + f""",
        CASE WHEN j.tasks = 1
             THEN (SELECT {own_address} FROM nodes_node n WHERE n.id = {execution}.node_id)
             ELSE (SELECT string_agg({own_address}, ',' ORDER BY x.task_index)
                     FROM jobs_jobexecution x JOIN nodes_node n ON n.id = x.node_id
                    WHERE x.job_id = j.id AND x.attempt = {execution}.attempt) END,
        EXISTS (SELECT FROM jobs_jobdependency d
                 WHERE d.upstream_id = j.id AND d.on = %(dependency_started)s)"""
    )


@dataclass(frozen=True, slots=True)
class ClaimedExecution:
    """An execution claimed for its node, from a row of CLAIMED_COLUMNS (same names, same
    order): what the node needs to run it, as plain values, and whether jobs wait for it
    to start. A batch of successes claims a job for each reporting thread, and building
    models for them would cost more than the rest of the answer."""

    execution_id: int
    job_id: int
    attempt: int
    token: str
    node_id: int
    task_index: int
    name: str
    kind: str
    command: list
    callable: str
    env: dict
    parameters: dict
    cpu_millis: int
    memory_mb: int
    gpu: int
    timeout_seconds: int | None
    cpu_time_limit_seconds: int | None
    tasks: int
    task_nodes: str  # its gang's node addresses, in task order
    releases_on_start: bool


def claimed_execution(row: Sequence) -> ClaimedExecution:
    values = dict(zip(CLAIMED_COLUMNS, row, strict=True))
    for name in _JSON_RUN_FIELDS:  # Django has psycopg hand jsonb over as text
        if isinstance(values[name], str):
            values[name] = json.loads(values[name])
    return ClaimedExecution(**values)


def claimed_execution_model(claimed: ClaimedExecution, *, now) -> JobExecution:
    """The claimed execution as a model, with its job's JOB_RUN_FIELDS (and only those)
    loaded, and `task_nodes` and `releases_on_start` set."""
    job = Job(
        id=claimed.job_id,
        status=JobStatus.RUNNING,
        started_at=now,
        **{name: getattr(claimed, name) for name in JOB_RUN_FIELDS},
    )
    execution = JobExecution(
        id=claimed.execution_id,
        job=job,
        attempt=claimed.attempt,
        task_index=claimed.task_index,
        node_id=claimed.node_id,
        token=claimed.token,
        status=ExecutionStatus.RUNNING,
        started_at=now,
    )
    execution.task_nodes = claimed.task_nodes
    execution.releases_on_start = claimed.releases_on_start
    return execution


def _node_counters_change(sign: str, rows: str) -> str:
    """The UPDATE that adds (`+`) or gives back (`-`) the resources of `rows` (a CTE with
    node_id, cpu_millis, memory_mb, gpu) on their nodes, one write per node."""
    return f"""
    UPDATE nodes_node AS node
       SET allocated_cpu_millis = node.allocated_cpu_millis {sign} change.cpu_millis,
           allocated_memory_mb = node.allocated_memory_mb {sign} change.memory_mb,
           allocated_gpu = node.allocated_gpu {sign} change.gpu
      FROM (SELECT node_id, sum(cpu_millis) AS cpu_millis, sum(memory_mb) AS memory_mb,
                   sum(gpu) AS gpu
              FROM {rows} GROUP BY node_id) AS change
     WHERE node.id = change.node_id"""


# Releases the live allocations of the executions in the CTE `execution` (with an `id`)
# and gives their resources back to their nodes; the node rows are written last, so
# they are held briefly (every finish and every cycle needs them).
_RELEASE = f"""
allocation AS (
    UPDATE resources_allocation a SET status = %(released)s, released_at = %(now)s
      FROM execution
     WHERE a.execution_id = execution.id AND a.status = ANY(%(live)s)
 RETURNING a.execution_id, a.node_id, a.cpu_millis, a.memory_mb, a.gpu
), node AS ({_node_counters_change("-", "allocation")}
)"""
_RELEASE_PARAMETERS = {
    "released": AllocationStatus.RELEASED,
    "live": list(LIVE_ALLOCATION_STATUSES),
}
# What a placement writes (reserved), and a claim or a placement claimed at once (running).
_START_PARAMETERS = {
    "execution_reserved": ExecutionStatus.RESERVED,
    "execution_running": ExecutionStatus.RUNNING,
    "allocation_reserved": AllocationStatus.RESERVED,
    "allocation_active": AllocationStatus.ACTIVE,
    "job_reserved": JobStatus.RESERVED,
    "job_running": JobStatus.RUNNING,
    "event_placed": EventType.JOB_PLACED,
    "event_started": EventType.JOB_STARTED,
    "dependency_started": DependencyCondition.STARTED,
}


def _events_insert(select: str) -> str:
    """An INSERT of events (`events.Event`) from `select`, which gives at, type, team_id,
    job_id, node_id, attempt, message and data: the hot paths write a job's events in the
    statement of the change they tell of."""
    return f"""
    INSERT INTO events_event (at, type, team_id, job_id, node_id, attempt, actor, message, data)
    SELECT at, type, team_id, job_id, node_id, attempt, '', message, data FROM ({select}
    ) AS new_event(at, type, team_id, job_id, node_id, attempt, message, data)
    ORDER BY at, job_id, type"""


# The started event of executions claimed for their node, from `rows` (with job_id,
# team_id, node_id, attempt, token; node names from nodes_node).
def _started_events(rows: str, where: str = "TRUE") -> str:
    return f"""
    SELECT %(now)s::timestamptz, %(event_started)s, r.team_id, r.job_id, r.node_id, r.attempt,
           format('started on %%s, attempt %%s', n.name, r.attempt),
           jsonb_build_object('node', n.name, 'token', r.token)
      FROM {rows} r JOIN nodes_node n ON n.id = r.node_id
     WHERE {where}"""


# --- Placing --------------------------------------------------------------------------

# A placement's event names the node, the queue and its strategy (a gang's, each task's
# node, with its index); one claimed at once also has its started event.
_PLACED_EVENTS = f"""
    SELECT %(now)s::timestamptz, %(event_placed)s, job.team_id, job.id, p.node_id,
           job.attempt,
           format('placed on %%s (queue %%s, %%s), attempt %%s%%s', n.name, q.name,
                  q.strategy, job.attempt,
                  CASE WHEN j.tasks > 1
                       THEN format(', task %%s of %%s', p.task_index, j.tasks) ELSE '' END),
           jsonb_build_object('node', n.name, 'queue', q.name, 'strategy', q.strategy,
                              'token', p.token)
             || CASE WHEN j.tasks > 1
                     THEN jsonb_build_object('task_index', p.task_index, 'tasks', j.tasks)
                     ELSE '{{}}'::jsonb END
      FROM job JOIN placed p ON p.job_id = job.id
      JOIN jobs_job j ON j.id = job.id
      JOIN nodes_node n ON n.id = p.node_id
      JOIN resources_queue q ON q.id = job.queue_id
    UNION ALL {_started_events("job", "r.claimed")}"""

# The writes of a placement, in one statement whatever the number of placements:
# executions, their allocations, the jobs' statuses and the node counters. Plain SQL
# over arrays rather than bulk_create: for thousands of rows, building model instances
# and compiling their values costs more than the statement itself. Only jobs the caller
# locked are here, so their status is still pending; the nodes are locked too. A column
# added to these tables needs a value here (or a database default); the cycle tests fail
# until it has one. A placement marked `claimed` is claimed for its node at once (as
# `claim_execution` leaves it), and its row of CLAIMED_COLUMNS comes back. A gang has a
# placement per task, all in this statement; its job row follows its task 0 (the only
# one a claim may be asked for: freed room places no gangs).
_PLACE_SQL = f"""
WITH placed AS (
    SELECT * FROM unnest(%(job_ids)s::bigint[], %(attempts)s::integer[],
                         %(node_ids)s::bigint[], %(tokens)s::text[], %(cpu)s::integer[],
                         %(memory)s::integer[], %(gpu)s::integer[], %(claimed)s::boolean[],
                         %(task_indexes)s::integer[])
        AS p(job_id, attempt, node_id, token, cpu_millis, memory_mb, gpu, claimed, task_index)
), execution AS (
    INSERT INTO jobs_jobexecution
        (job_id, attempt, task_index, node_id, token, status, reserved_at, started_at, error,
         log_path, log_tail)
    SELECT job_id, attempt, task_index, node_id, token,
           CASE WHEN claimed THEN %(execution_running)s ELSE %(execution_reserved)s END,
           %(now)s, CASE WHEN claimed THEN %(now)s END, '', '', ''
      FROM placed
    RETURNING id, token
), allocation AS (
    INSERT INTO resources_allocation
        (execution_id, node_id, queue_id, team_id, cpu_millis, memory_mb, gpu, status,
         created_at, activated_at)
    SELECT execution.id, placed.node_id, of_job.queue_id, of_job.team_id, placed.cpu_millis,
           placed.memory_mb, placed.gpu,
           CASE WHEN claimed THEN %(allocation_active)s ELSE %(allocation_reserved)s END,
           %(now)s, CASE WHEN claimed THEN %(now)s END
      FROM placed JOIN execution USING (token) JOIN jobs_job of_job ON of_job.id = placed.job_id
), job AS (
    UPDATE jobs_job AS job
       SET status = CASE WHEN placed.claimed THEN %(job_running)s ELSE %(job_reserved)s END,
           started_at = CASE WHEN placed.claimed THEN %(now)s ELSE job.started_at END,
           pending_reason = %(no_reason)s, attempts = placed.attempt,
           last_execution_id = execution.id
      FROM placed JOIN execution USING (token)
     WHERE job.id = placed.job_id AND placed.task_index = 0
    RETURNING job.id, execution.id AS execution_id, placed.attempt, placed.token,
              placed.node_id, placed.claimed, job.id AS job_id, job.team_id, job.queue_id,
              placed.task_index
), node AS ({_node_counters_change("+", "placed")}
), event AS ({_events_insert(_PLACED_EVENTS)}
)
SELECT job.execution_id, job.id, job.attempt, job.token, job.node_id,
       {_job_run_columns("job")}
  FROM job JOIN jobs_job j ON j.id = job.id
 WHERE job.claimed
"""
# Up to this many placements are written through a prepared statement. A plan made for
# a handful of rows (a node's freed room) would be the wrong one for the thousands of a
# scheduling cycle after a burst, so those are planned afresh for their size.
PREPARED_PLACEMENTS_MAX = 64


class Placement(NamedTuple):  # a tuple: a cycle makes thousands of them
    job_id: int
    attempt: int
    node_id: int
    token: str
    cpu_millis: int
    memory_mb: int
    gpu: int
    claimed: bool = False  # claimed for its node at once: running, not reserved
    task_index: int = 0  # a gang's task


def placements_write(placements: Sequence[Placement], *, now) -> list[ClaimedExecution]:
    """Write the placements; returns the claimed ones' executions, in their order."""
    if not placements:
        return []
    small = len(placements) <= PREPARED_PLACEMENTS_MAX
    columns = map(list, zip(*placements, strict=True))
    job_ids, attempts, node_ids, tokens, cpu, memory, gpu, claimed, task_indexes = columns
    with prepared_cursor() if small else connection.cursor() as cursor:
        cursor.execute(
            _PLACE_SQL,
            {
                "now": now,
                "job_ids": job_ids,
                "attempts": attempts,
                "node_ids": node_ids,
                "tokens": tokens,
                "cpu": cpu,
                "memory": memory,
                "gpu": gpu,
                "claimed": claimed,
                "task_indexes": task_indexes,
                **_START_PARAMETERS,
                "no_reason": PendingReason.NONE,
            },
        )
        by_token = {row[3]: claimed_execution(row) for row in cursor.fetchall()}
    return [by_token[p.token] for p in placements if p.claimed]


# --- Claiming -------------------------------------------------------------------------

# One statement, so the claim is one round trip and one commit, and it hands back what
# the node needs to run the job. The execution's UPDATE filters on columns of the
# claimed row only: PostgreSQL re-checks those after waiting for a racing claim, so
# exactly one claim wins.
_CLAIM_SQL = f"""
WITH execution AS (
    UPDATE jobs_jobexecution SET status = %(execution_running)s, started_at = %(now)s
     WHERE token = %(token)s AND status = %(execution_reserved)s AND node_id = %(node_id)s
 RETURNING id, job_id, attempt, token, node_id, task_index
), allocation AS (
    UPDATE resources_allocation a SET status = %(allocation_active)s, activated_at = %(now)s
      FROM execution
     WHERE a.execution_id = execution.id AND a.status = %(allocation_reserved)s
), job AS (
    UPDATE jobs_job j SET status = %(job_running)s, started_at = %(now)s
      FROM execution WHERE j.id = execution.job_id AND j.status = %(job_reserved)s
), event AS ({
    _events_insert(
        _started_events(
            "(SELECT e.*, j.team_id FROM execution e JOIN jobs_job j ON j.id = e.job_id)"
        )
    )
}
)
SELECT execution.id, execution.job_id, execution.attempt, execution.token,
       execution.node_id, {_job_run_columns("execution")}
  FROM execution JOIN jobs_job j ON j.id = execution.job_id
"""


def claim_execution(*, token: str, node_id: int, now) -> JobExecution | None:
    """Claim a reserved execution for its node: execution and job running, allocation
    active. None, and nothing changed, when the token is unknown, meant for another
    node, or no longer reserved."""
    with prepared_cursor() as cursor:
        cursor.execute(
            _CLAIM_SQL,
            {
                "token": token,
                "node_id": node_id,
                "now": now,
                **_START_PARAMETERS,
            },
        )
        row = cursor.fetchone()
    return None if row is None else claimed_execution_model(claimed_execution(row), now=now)


# --- Ending successes -----------------------------------------------------------------

_SUCCEEDED_EVENTS = """
    SELECT %(now)s::timestamptz, %(event_succeeded)s, e.team_id, e.job_id, e.node_id, e.attempt,
           format('succeeded on %%s, attempt %%s', n.name, e.attempt),
           jsonb_build_object('node', n.name, 'token', e.token)
      FROM execution e JOIN nodes_node n ON n.id = e.node_id"""

# A success is the common ending, so successes are one statement and one round trip,
# for a whole batch of them: their row locks (jobs, then executions, allocations and
# nodes) are taken at once, never one by one while an agent thread waits for its turn
# to send the next statement, and each node row is written once per batch. An execution
# is left alone when its job has a cancel pending, is not live or is a gang (whose job
# succeeds with its last task), or when it is not running; the general path then
# decides. The batch's executions are found by token first (materialized), so the plan
# starts from the handful of rows the batch is about, whatever the statistics say about
# the jobs table; a token reported twice counts once, with its first report. Given a
# node, a batch that names any execution allocated elsewhere changes nothing, and says
# so in each row (there is always one, its token null when nothing ended): the node's
# credential checks its batch in this round trip rather than one of its own.
_FINISH_SUCCEEDED_SQL = f"""
WITH outcome AS MATERIALIZED (
    SELECT DISTINCT ON (o.token) e.job_id, e.node_id, o.token, o.log_path, o.log_tail,
           o.gpu_ids::smallint[] AS gpu_ids
      FROM unnest(%(tokens)s::text[], %(log_paths)s::text[], %(log_tails)s::text[],
                  %(gpu_ids)s::text[])
           WITH ORDINALITY AS o(token, log_path, log_tail, gpu_ids, n)
      JOIN jobs_jobexecution e ON e.token = o.token
     ORDER BY o.token, o.n
), other_node AS MATERIALIZED (
    SELECT %(node_id)s::bigint IS NOT NULL
           AND EXISTS (SELECT FROM outcome WHERE node_id IS DISTINCT FROM %(node_id)s::bigint)
           AS found
), job AS (
    SELECT j.id, j.team_id FROM jobs_job j
      JOIN outcome ON outcome.job_id = j.id
     WHERE j.status = ANY(%(job_live)s) AND j.cancel_requested_at IS NULL AND j.tasks = 1
       AND NOT (SELECT found FROM other_node)
     ORDER BY j.id
       FOR UPDATE OF j
), execution AS (
    UPDATE jobs_jobexecution e
       SET status = %(execution_succeeded)s, exit_code = 0, error = '', finished_at = %(now)s,
           log_path = outcome.log_path, log_tail = outcome.log_tail, gpu_ids = outcome.gpu_ids
      FROM job, outcome
     WHERE e.job_id = job.id AND e.token = outcome.token AND e.status = %(execution_running)s
 RETURNING e.id, e.job_id, e.token, e.node_id, e.attempt, job.team_id
), job_ended AS (
    UPDATE jobs_job j
       SET status = %(job_succeeded)s, pending_reason = %(no_reason)s, finished_at = %(now)s
      FROM execution WHERE j.id = execution.job_id
    RETURNING j.id, j.array_parent_id, j.concurrency_key
), event AS ({_events_insert(_SUCCEEDED_EVENTS)}
), {_RELEASE}
SELECT other_node.found, ended.* FROM other_node LEFT JOIN (
    SELECT execution.token, execution.job_id, job_ended.array_parent_id,
           job_ended.concurrency_key,
           EXISTS (SELECT 1 FROM jobs_jobdependency d WHERE d.upstream_id = execution.job_id)
           OR EXISTS (SELECT 1 FROM jobs_job w
                       WHERE w.id = execution.job_id AND w.workflow_id IS NOT NULL)
      FROM execution JOIN job_ended ON job_ended.id = execution.job_id
) AS ended ON TRUE
"""


class EndedSuccesses(dict):
    """{token: job id} of the successes ended, the array jobs whose tasks they were,
    whether any held a concurrency limit's slot (its jobs may wait on other nodes), and
    which of the jobs have dependents or are workflow steps: what the caller must settle
    in the same transaction."""

    def __init__(self, rows=(), *, array_ids=(), freed_limit_slots=False, to_settle=()):
        super().__init__(rows)
        self.array_ids = set(array_ids)
        self.freed_limit_slots = freed_limit_slots
        self.to_settle = list(to_settle)


def _array_literal(numbers: Sequence[int]) -> str:
    return "{" + ",".join(str(int(n)) for n in numbers) + "}"


class ExecutionOfAnotherNode(Exception):
    """A node reported successes of executions allocated to another node."""


@dataclass(frozen=True)
class Success:
    token: str
    log_path: str = ""
    log_tail: str = ""
    gpu_ids: Sequence[int] = ()  # the node's devices it ran on


def successes_finish(
    successes: Sequence[Success], *, now, node_id: int | None = None
) -> EndedSuccesses:
    """End the running executions that succeeded: execution, job, allocation and node
    counters (the scheduler's wake-up is the caller's, after the commit: see
    `common.wakeup.wake_after_commit`). Returns {token: job id} of
    those it ended, with the arrays they were tasks of and the jobs whose dependents and
    workflows are to be settled. Given `node_id`, raises ExecutionOfAnotherNode, having
    changed nothing, when any of them is not allocated to that node."""
    with prepared_cursor() as cursor:
        cursor.execute(
            _FINISH_SUCCEEDED_SQL,
            {
                "tokens": [s.token for s in successes],
                "log_paths": [s.log_path for s in successes],
                "log_tails": [s.log_tail for s in successes],
                # As array literals: unnest would flatten an array of arrays.
                "gpu_ids": [_array_literal(s.gpu_ids) for s in successes],
                "node_id": node_id,
                "now": now,
                "job_live": [JobStatus.RESERVED, JobStatus.RUNNING],
                "execution_succeeded": ExecutionStatus.SUCCEEDED,
                "execution_running": ExecutionStatus.RUNNING,
                "job_succeeded": JobStatus.SUCCEEDED,
                "no_reason": PendingReason.NONE,
                "event_succeeded": EventType.JOB_SUCCEEDED,
                **_RELEASE_PARAMETERS,
            },
        )
        rows = cursor.fetchall()
    if rows[0][0]:
        raise ExecutionOfAnotherNode(node_id)
    rows = [row[1:] for row in rows if row[1] is not None]
    return EndedSuccesses(
        ((token, job_id) for token, job_id, *_ in rows),
        array_ids=(array_id for _, _, array_id, *_ in rows if array_id is not None),
        freed_limit_slots=any(key for _, _, _, key, *_ in rows),
        to_settle=(job_id for _, job_id, *_, settle in rows if settle),
    )


# --- Releasing ------------------------------------------------------------------------

_RELEASE_SQL = f"""
WITH execution AS (SELECT %(execution_id)s::bigint AS id), {_RELEASE}
SELECT node_id, cpu_millis, memory_mb, gpu FROM allocation
"""


def allocation_release(*, execution_id: int, now) -> bool:
    """Release the execution's live allocation and give its resources back to its node.

    False when it was already released: the second caller changes nothing."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("allocation_release must run inside the caller's transaction")
    with prepared_cursor() as cursor:
        cursor.execute(
            _RELEASE_SQL, {"execution_id": execution_id, "now": now, **_RELEASE_PARAMETERS}
        )
        row = cursor.fetchone()
    if row is None:
        return False
    node_id, cpu_millis, memory_mb, gpu = row
    logger.info(
        "allocation released execution=%s node=%s cpu_millis=%s memory_mb=%s gpu=%s",
        execution_id,
        node_id,
        cpu_millis,
        memory_mb,
        gpu,
    )
    return True
