"""Fair share on past usage: each queue's and each team's `past_share`, what its jobs
used over the last days as a share of the cluster, decayed by FAIR_SHARE_HALF_LIFE_DAYS
(Slurm's decayed usage).

The placement orders queues by what they hold now plus their past share, over their
weight (`resources.placement.queue_rank`): a queue that used much lately yields the
room that frees up to one that did not, until the other holds that much more now.
Within a queue shared by several teams it orders the teams alike, each by what its jobs
in the queue hold now plus the team's past share (of the whole cluster, in every
queue), over the team's weight. Since a share is at most 1, the past only shifts the
order, by at most the whole cluster: no queue or team waits for days. Preemption
reclaims on what queues hold now only.

The past is the usage report's tally (`UsageTally`: what ended attempts used, by day),
each day's CPU, memory and GPU seconds weighted by 0.5 ** (age in days / half-life),
over the cluster's capacity (its nodes not offline) for as long, weighted alike: today
counts the seconds since midnight (UTC), each day before a whole day. The dominant
resource's share is the queue's (or team's). Days older than
FAIR_SHARE_DAYS_PER_HALF_LIFE half-lives are left out (their weight is under 1 %). With
a half-life of 0 every share is 0, and queues and teams are ordered by what they hold
now, as before.
"""

import math

from django.conf import settings
from django.db import connection, transaction

from accounts.models import Team
from common.db import without_jit
from nodes.models import NodeStatus
from resources.models import Queue

# Days weigh 0.5 ** 7 < 1 % at seven half-lives.
FAIR_SHARE_DAYS_PER_HALF_LIFE = 7


def _past_share_sql(*, table: str, key: str, label: str) -> str:
    """The statement that writes every row's new past share in `table` (queues or
    teams), summing the tally by its `key` column, where it changed (0 when off, or when
    it used nothing, or the cluster has no capacity); it returns each changed row's
    `label` and share."""
    return f"""
WITH today AS (
    SELECT (now() AT TIME ZONE 'UTC')::date AS day,
           date_part('epoch', now() - date_trunc('day', now() AT TIME ZONE 'UTC')
                                        AT TIME ZONE 'UTC') AS seconds
), weighed AS (
    SELECT u.{key} AS owner, power(0.5, (today.day - u.day) / %(half_life)s) AS weight,
           u.cpu_seconds, u.memory_mb_seconds, u.gpu_seconds
      FROM jobs_usagetally u, today
     WHERE %(half_life)s > 0 AND u.day > today.day - %(days)s AND u.day <= today.day
), used AS (
    SELECT owner, sum(cpu_seconds * weight) AS cpu,
           sum(memory_mb_seconds * weight) AS memory, sum(gpu_seconds * weight) AS gpu
      FROM weighed
     GROUP BY owner
), span AS (
    -- Seconds of the days counted, weighed as their usage is.
    SELECT today.seconds + coalesce(sum(86400 * power(0.5, age / %(half_life)s)), 0) AS seconds
      FROM today LEFT JOIN generate_series(1, %(days)s - 1) AS age ON %(half_life)s > 0
     GROUP BY today.seconds
), capacity AS (
    SELECT sum(cpu_millis) / 1000.0 AS cpu, sum(memory_mb) AS memory, sum(gpu) AS gpu
      FROM nodes_node WHERE status <> '{NodeStatus.OFFLINE.value}'
), shares AS (
    SELECT o.id, least(greatest(
               coalesce(used.cpu / nullif(capacity.cpu * span.seconds, 0), 0),
               coalesce(used.memory / nullif(capacity.memory * span.seconds, 0), 0),
               coalesce(used.gpu / nullif(capacity.gpu * span.seconds, 0), 0)), 1) AS share
      FROM {table} o
      LEFT JOIN used ON used.owner = o.id
     CROSS JOIN capacity CROSS JOIN span
)
UPDATE {table} o SET past_share = shares.share
  FROM shares
 WHERE o.id = shares.id AND o.past_share IS DISTINCT FROM shares.share
RETURNING o.{label}, o.past_share
"""  # noqa: S608 (the code's literals; every value is a parameter)


PAST_SHARE_SQL = {
    "queues": _past_share_sql(table=Queue._meta.db_table, key="queue_id", label="name"),
    "teams": _past_share_sql(table=Team._meta.db_table, key="team_id", label="slug"),
}


def past_shares_refresh() -> dict[str, dict[str, float]]:
    """Work out every queue's and every team's past share again (the scheduler's leader
    does, every FAIR_SHARE_REFRESH_SECONDS); returns the shares that changed, by queue
    name and by team slug (`{"queues": {...}, "teams": {...}}`)."""
    half_life = float(settings.FAIR_SHARE_HALF_LIFE_DAYS)
    days = max(1, math.ceil(half_life * FAIR_SHARE_DAYS_PER_HALF_LIFE))
    changed = {}
    with transaction.atomic(), connection.cursor() as cursor:
        without_jit()
        for owners, sql in PAST_SHARE_SQL.items():
            cursor.execute(sql, {"half_life": half_life, "days": days})
            changed[owners] = dict(cursor.fetchall())
    return changed
