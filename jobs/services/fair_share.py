"""Fair share on past usage: each queue's `past_share`, what it used over the last days
as a share of the cluster, decayed by FAIR_SHARE_HALF_LIFE_DAYS (Slurm's decayed usage).

The placement orders queues by what they hold now plus their past share, over their
weight (`resources.placement.queue_rank`): a queue that used much lately yields the
room that frees up to one that did not, until the other holds that much more now. Since
a share is at most 1, the past only shifts the order, by at most the whole cluster:
no queue waits for days. Preemption reclaims on what queues hold now only.

The past is the usage report's tally (`UsageTally`: what ended attempts used, by day),
each day's CPU, memory and GPU seconds weighted by 0.5 ** (age in days / half-life),
over the cluster's capacity (its nodes not offline) for as long, weighted alike: today
counts the seconds since midnight (UTC), each day before a whole day. The dominant
resource's share is the queue's. Days older than FAIR_SHARE_DAYS_PER_HALF_LIFE
half-lives are left out (their weight is under 1 %). With a half-life of 0 every share
is 0, and queues are ordered by what they hold now, as before.
"""

import math

from django.conf import settings
from django.db import connection, transaction

from common.db import without_jit
from nodes.models import NodeStatus

# Days weigh 0.5 ** 7 < 1 % at seven half-lives.
FAIR_SHARE_DAYS_PER_HALF_LIFE = 7

# Every queue's new past share (0 when off, or when it used nothing, or the cluster has
# no capacity), written only where it changed.
PAST_SHARE_SQL = f"""
WITH today AS (
    SELECT (now() AT TIME ZONE 'UTC')::date AS day,
           date_part('epoch', now() - date_trunc('day', now() AT TIME ZONE 'UTC')
                                        AT TIME ZONE 'UTC') AS seconds
), weighed AS (
    SELECT u.queue_id, power(0.5, (today.day - u.day) / %(half_life)s) AS weight,
           u.cpu_seconds, u.memory_mb_seconds, u.gpu_seconds
      FROM jobs_usagetally u, today
     WHERE %(half_life)s > 0 AND u.day > today.day - %(days)s AND u.day <= today.day
), used AS (
    SELECT queue_id, sum(cpu_seconds * weight) AS cpu,
           sum(memory_mb_seconds * weight) AS memory, sum(gpu_seconds * weight) AS gpu
      FROM weighed
     GROUP BY queue_id
), span AS (
    -- Seconds of the days counted, weighed as their usage is.
    SELECT today.seconds + coalesce(sum(86400 * power(0.5, age / %(half_life)s)), 0) AS seconds
      FROM today LEFT JOIN generate_series(1, %(days)s - 1) AS age ON %(half_life)s > 0
     GROUP BY today.seconds
), capacity AS (
    SELECT sum(cpu_millis) / 1000.0 AS cpu, sum(memory_mb) AS memory, sum(gpu) AS gpu
      FROM nodes_node WHERE status <> '{NodeStatus.OFFLINE.value}'
), shares AS (
    SELECT q.id, least(greatest(
               coalesce(used.cpu / nullif(capacity.cpu * span.seconds, 0), 0),
               coalesce(used.memory / nullif(capacity.memory * span.seconds, 0), 0),
               coalesce(used.gpu / nullif(capacity.gpu * span.seconds, 0), 0)), 1) AS share
      FROM resources_queue q
      LEFT JOIN used ON used.queue_id = q.id
     CROSS JOIN capacity CROSS JOIN span
)
UPDATE resources_queue q SET past_share = shares.share
  FROM shares
 WHERE q.id = shares.id AND q.past_share IS DISTINCT FROM shares.share
RETURNING q.name, q.past_share
"""  # noqa: S608 (the code's literals; every value is a parameter)


def queues_past_share_refresh() -> dict[str, float]:
    """Work out every queue's past share again (the scheduler's leader does, every
    FAIR_SHARE_REFRESH_SECONDS); returns the shares that changed, by queue name."""
    half_life = float(settings.FAIR_SHARE_HALF_LIFE_DAYS)
    days = max(1, math.ceil(half_life * FAIR_SHARE_DAYS_PER_HALF_LIFE))
    with transaction.atomic(), connection.cursor() as cursor:
        without_jit()
        cursor.execute(PAST_SHARE_SQL, {"half_life": half_life, "days": days})
        return dict(cursor.fetchall())
