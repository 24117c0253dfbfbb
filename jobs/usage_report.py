"""The usage report (`GET /api/usage/report/`, `sched report`): what jobs' attempts used
over a span of UTC days, summed by team, queue, submitter and day, as Slurm's `sreport`
sums its accounting.

An attempt uses its allocation's CPU, memory and GPUs for as long as it runs, from its
start to its end (a running one: until now); an attempt that never started used nothing.
Its run is split between the UTC days it spans, and it counts as an attempt on the day
it ended. The history is `UsageTally`, into which the metrics' fold adds each ended
attempt once (see `jobs.services.metrics_tallies`), so it outlives the jobs that
retention purges; the report reads the tally and, in the same statement, the attempts
not folded yet, so it counts each attempt exactly once whenever the fold runs.
"""

from dataclasses import dataclass
from datetime import date

from django.db import connection, transaction

from accounts.models import User
from accounts.selectors import team_list_visible
from common.db import without_jit

from .models import ExecutionStatus

GROUPS = ("team", "queue", "user", "day")


def usage_rows(source: str, end: str) -> str:
    """A query of what each started execution `e` of `source` used, a row per UTC day its
    run spans (from its start to `end`, clamped at the start against clock skew): the day,
    its job's team and queue, its submitter's username, whether it ended that day
    (`ends`), its status, the `seconds` it ran that day, and its allocation's amounts
    (none without an allocation)."""
    return f"""SELECT d.day::date AS day, j.team_id, j.queue_id,
       coalesce(u.username, '') AS username,
       e.finished_at IS NOT NULL AND d.day = date_trunc('day', t.stop) AS ends, e.status,
       greatest(date_part('epoch', least(t.stop, d.day + interval '1 day')
                                   - greatest(t.start, d.day)), 0) AS seconds,
       coalesce(a.cpu_millis, 0) AS cpu_millis, coalesce(a.memory_mb, 0) AS memory_mb,
       coalesce(a.gpu, 0) AS gpu
  FROM {source} e
  JOIN jobs_job j ON j.id = e.job_id
  LEFT JOIN resources_allocation a ON a.execution_id = e.id
  LEFT JOIN accounts_user u ON u.id = j.submitted_by_id
 CROSS JOIN LATERAL (
       SELECT e.started_at AT TIME ZONE 'UTC' AS start,
              greatest({end}, e.started_at) AT TIME ZONE 'UTC' AS stop) t
 CROSS JOIN LATERAL generate_series(
       date_trunc('day', t.start), date_trunc('day', t.stop), interval '1 day') d(day)
 WHERE e.started_at IS NOT NULL"""  # noqa: S608 (the code's own SQL)


# The sums of rows of `usage_rows`, as UsageTally keeps them.
USAGE_SUMS = f"""count(*) FILTER (WHERE ends) AS attempts,
       count(*) FILTER (WHERE ends AND status = '{ExecutionStatus.SUCCEEDED.value}') AS succeeded,
       sum(seconds) AS run_seconds, sum(seconds * cpu_millis / 1000.0) AS cpu_seconds,
       sum(seconds * memory_mb) AS memory_mb_seconds, sum(seconds * gpu) AS gpu_seconds"""

FIGURES = (
    "attempts",
    "succeeded",
    "run_seconds",
    "cpu_seconds",
    "memory_mb_seconds",
    "gpu_seconds",
)
USAGE_COLUMNS = ", ".join(FIGURES)

# The executions not yet in the tally that have started: running, or ended since the
# last fold (through the partial index of unfolded executions).
UNFOLDED_STARTED = """(SELECT * FROM jobs_jobexecution
                 WHERE NOT metrics_folded AND started_at IS NOT NULL)"""

# Until when an execution `e` ran, for `usage_rows`: its end, or now while it runs (an
# ended one without an end, which nothing writes, ran for no time). The fold, which
# takes ended executions only, and the report count alike.
RUN_END = f"""coalesce(e.finished_at,
         CASE WHEN e.status = '{ExecutionStatus.RUNNING.value}' THEN now() END, e.started_at)"""

# Each group's column in the report, and what it is read from.
GROUP_COLUMNS = {
    "team": "tm.slug",
    "queue": "q.name",
    "user": "nullif(usage.username, '')",
    "day": "usage.day",
}


@dataclass(frozen=True)
class UsageQuery:
    since: date  # the first day counted
    until: date  # the day after the last
    by: tuple[str, ...]  # of GROUPS, in the order the rows are grouped and sorted
    team: int | None = None
    queue: int | None = None
    user: str | None = None


def usage_report(*, user: User, query: UsageQuery) -> list[dict]:
    """The report's rows: one per group of `query.by` that used something or ran an
    attempt, with its group's values (`team` slug, `queue` name, `user` name or None,
    `day`) and the sums of FIGURES, sorted by the groups. Only the teams the user may
    see."""
    where = ["usage.day >= %(since)s", "usage.day < %(until)s"]
    params: dict = {"since": query.since, "until": query.until}
    if not user.is_staff:
        where.append("usage.team_id = ANY(%(teams)s)")
        params["teams"] = list(team_list_visible(user=user).values_list("pk", flat=True))
    for name, column in (("team", "team_id"), ("queue", "queue_id"), ("user", "username")):
        if getattr(query, name) is not None:
            where.append(f"usage.{column} = %({name})s")
            params[name] = getattr(query, name)
    groups = [f"{GROUP_COLUMNS[group]} AS {group}" for group in query.by]
    keys = ", ".join(str(n) for n in range(1, len(groups) + 1))
    sums = ", ".join(f"sum(usage.{figure}) AS {figure}" for figure in FIGURES)
    sql = f"""
WITH live AS MATERIALIZED (
    SELECT day, team_id, queue_id, username, {USAGE_SUMS}
      FROM ({usage_rows(UNFOLDED_STARTED, RUN_END)}) AS live
     GROUP BY day, team_id, queue_id, username
), usage AS (
    SELECT day, team_id, queue_id, username, {USAGE_COLUMNS} FROM jobs_usagetally
    UNION ALL
    SELECT day, team_id, queue_id, username, {USAGE_COLUMNS} FROM live
)
SELECT {", ".join(groups)}, {sums}
  FROM usage
  JOIN accounts_team tm ON tm.id = usage.team_id
  JOIN resources_queue q ON q.id = usage.queue_id
 WHERE {" AND ".join(where)}
 GROUP BY {keys}
 ORDER BY {keys}
"""  # noqa: S608 (the code's literals; every value is a parameter)
    # `live` is worked out once (the planner would otherwise repeat it for each queue it
    # joins); the filters reach into the tally's index through `usage`.
    with transaction.atomic(), connection.cursor() as cursor:
        without_jit()
        cursor.execute(sql, params)
        columns = [column.name for column in cursor.description]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
