"""Why a job waits: `GET /api/jobs/{id}/why/`.

A read, in words and figures: the job's pending reason, its place in its queue, the
queue's quota, and what every node lacks for it. The fit rules are
`resources.placement`'s own predicates, so this answer and the scheduling cycle cannot
disagree about whether a node could take the job. Nodes are grouped by what they lack,
so the answer stays small on a thousand nodes, and it costs a fixed number of queries.
"""

from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Count, Q
from django.utils import timezone

from nodes.models import Node, NodeStatus
from resources.placement import NodeSlot, QueueState, Request, fits_now, matches_selector
from resources.selectors import queue_allocated

from .models import (
    ACTIVE_JOB_STATUSES,
    TERMINAL_JOB_STATUSES,
    WAITING_NOT_BEFORE,
    WAITING_SCHEDULER,
    ConcurrencyLimit,
    DependencyCondition,
    Job,
    JobRetry,
    JobStatus,
    PendingReason,
)

# Names listed per group of nodes; `count` says how many the group has.
NODES_NAMED_PER_GROUP = 20

FITS, SHORT, SELECTOR, NOT_READY = "fits", "short", "selector", "not_ready"
VERDICT_ORDER = (FITS, SHORT, SELECTOR, NOT_READY)


def job_why_pending(
    *, job: Job, now: datetime | None = None, preemption: dict | None = None
) -> dict:
    """The answer of `GET /api/jobs/{id}/why/` for `job` (fetched by the caller, with
    its queue). A job that is not pending gets its status in words; a pending one its
    reason, retry, queue position and quota, the nodes grouped by verdict, and the
    `preemption` the caller found under way or possible for it
    (`jobs.scheduling.preemption.job_preemption_preview`)."""
    now = now or timezone.now()
    if job.status != JobStatus.PENDING:
        return {
            "job": job.pk,
            "status": job.status,
            "pending": False,
            "summary": _not_pending_summary(job),
        }
    due = job.not_before is None or job.not_before <= now
    reason = job.pending_reason or (WAITING_SCHEDULER if due else WAITING_NOT_BEFORE)
    request = Request(job.cpu_millis, job.memory_mb, job.gpu, job.node_selector or {})
    retry = _last_retry(job) if reason == PendingReason.WAITING_RETRY else None
    whole = Request(*(amount * job.tasks for amount in (job.cpu_millis, job.memory_mb, job.gpu)))
    queue = _queue_figures(job, whole, now=now, due=due)
    nodes = _nodes()
    groups = node_groups(request=request, nodes=nodes)
    reservation = _reservation(job, reason)
    gang = gang_room(tasks=job.tasks, request=request, nodes=nodes) if job.tasks > 1 else None
    summary = _pending_summary(job, reason, due, retry, queue, groups, reservation)
    if gang is not None and reason == PendingReason.GANG_DOES_NOT_FIT:
        summary = f"The gang does not fit: {gang['summary']}{_position_words(queue)}"
    return {
        "job": job.pk,
        "status": job.status,
        "pending": True,
        "reason": reason,
        "summary": summary + _preemption_words(preemption),
        "gang": gang,
        "not_before": job.not_before,
        "retry": retry
        and {"attempt": retry.attempt, "reason": retry.reason, "due_at": retry.due_at},
        "queue": queue,
        "waits_on": _waits_on(job, reason, due, reservation),
        "nodes": [group.as_json() for group in groups],
        "preemption": preemption,
    }


def _preemption_words(preemption: dict | None) -> str:
    if preemption is None:
        return ""
    victims = ", ".join(v["token"] for v in preemption["victims"])
    if preemption["state"] == "under_way":
        return f" Preempting on node {preemption['node']}: {victims or 'stopped'}."
    return f" It would preempt on node {preemption['node']}: {victims}."


def _last_retry(job: Job) -> JobRetry | None:
    # Through .all(), so the detail views' prefetch of retries serves it.
    return max(job.retries.all(), key=lambda retry: retry.attempt, default=None)


# --- What else it waits on ------------------------------------------------------------


def _reservation(job: Job, reason: str) -> dict | None:
    """The reservation the job holds (reason `reservation`) or would delay (reason
    `would_delay_reservation`): at most one job holds one at a time. One query."""
    if reason == PendingReason.RESERVATION:
        holder = job
    elif reason == PendingReason.WOULD_DELAY_RESERVATION:
        holder = (
            Job.objects.filter(status=JobStatus.PENDING, pending_reason=PendingReason.RESERVATION)
            .only("id", "reservation_node_id", "reservation_nodes", "reservation_start_at")
            .first()
        )
        if holder is None:  # started or given up since the last cycle looked
            return None
    else:
        return None
    node_ids = list(dict.fromkeys(holder.reservation_nodes or [holder.reservation_node_id]))
    names = dict(Node.objects.filter(pk__in=node_ids).values_list("id", "name"))
    nodes = [names[node_id] for node_id in node_ids if node_id in names]
    return {
        "job": holder.pk,
        "node": nodes[0] if nodes else None,
        "nodes": nodes,
        "expected_start": holder.reservation_start_at,
    }


def _reservation_words(reservation: dict) -> str:
    start = reservation["expected_start"]
    nodes = reservation["nodes"]
    where = f"node {reservation['node']}" if len(nodes) < 2 else f"nodes {', '.join(nodes)}"
    return (
        f"reserved: expected start {start.isoformat(timespec='seconds') if start else 'unknown'}"
        f" on {where}"
    )


def _waits_on(job: Job, reason: str, due: bool, reservation: dict | None = None) -> list[dict]:
    """Each thing besides room that holds the job, with a `kind` and a `summary` in
    words: its start time, its dependencies, its team's concurrency limit, its array's
    parallelism, the reservation it holds or would delay, and the deadline that cancels
    it. At most one query per kind."""
    items = []
    if reservation is not None and reason == PendingReason.RESERVATION:
        items.append(
            {
                "kind": "reservation",
                **reservation,
                "summary": f"Room is {_reservation_words(reservation)}, by the time limits of "
                "the jobs running there; jobs behind it start only if they cannot delay it.",
            }
        )
    elif reservation is not None:
        items.append(
            {
                "kind": "would_delay",
                **reservation,
                "summary": f"Starting it now would delay job {reservation['job']} "
                f"({_reservation_words(reservation)}).",
            }
        )
    if not due:
        kind = "retry_time" if reason == PendingReason.WAITING_RETRY else "start_time"
        items.append(
            {
                "kind": kind,
                "at": job.not_before,
                "summary": f"Not before {job.not_before.isoformat()}.",
            }
        )
    items.extend(_dependencies(job))
    if reason == PendingReason.CONCURRENCY_LIMIT:
        items.append(
            {
                "kind": "concurrency_limit",
                "key": job.concurrency_key,
                "summary": _concurrency_limit_summary(job),
            }
        )
    if job.array_parent_id is not None and reason == PendingReason.WAITING_ARRAY_SLOT:
        items.append(_array_slot(job))
    if job.deadline is not None:
        items.append(
            {
                "kind": "deadline",
                "at": job.deadline,
                "summary": f"Cancelled if not ended by {job.deadline.isoformat()}.",
            }
        )
    return items


def _dependencies(job: Job) -> list[dict]:
    """The upstream jobs not yet meeting their condition, at most NODES_NAMED_PER_GROUP
    of them named, however many the job depends on."""
    rows = list(
        job.dependencies.order_by("upstream_id").values_list(
            "upstream_id", "upstream__name", "upstream__status", "upstream__started_at", "on"
        )
    )
    if not rows:
        return []
    unmet = [row for row in rows if not _dependency_met(*row[2:])]
    return [
        {
            "kind": "dependencies",
            "count": len(rows),
            "unmet": len(unmet),
            "jobs": [
                {"job": pk, "name": name, "status": status, "on": on}
                for pk, name, status, _, on in unmet[:NODES_NAMED_PER_GROUP]
            ],
            "summary": f"{len(unmet)} of its {len(rows)} dependencies not met yet."
            if unmet
            else f"All {len(rows)} of its dependencies are met.",
        }
    ]


def _dependency_met(status: str, started_at, on: str) -> bool:
    """The edge's condition, as `services.dependencies` judges it."""
    if on == DependencyCondition.STARTED:
        return started_at is not None
    if on == DependencyCondition.FINISHED:
        return status in TERMINAL_JOB_STATUSES
    return status == on


def _array_slot(job: Job) -> dict:
    parent = Job.objects.only("array_parallelism").get(pk=job.array_parent_id)
    active = Job.objects.filter(
        array_parent_id=job.array_parent_id, status__in=ACTIVE_JOB_STATUSES
    ).count()
    return {
        "kind": "array_slot",
        "array": job.array_parent_id,
        "parallelism": parent.array_parallelism,
        "active": active,
        "summary": f"Array job {job.array_parent_id} runs at most {parent.array_parallelism} "
        f"tasks at once; {active} run now.",
    }


# --- The queue -------------------------------------------------------------------------


def _queue_figures(job: Job, request: Request, *, now, due: bool) -> dict:
    """Position among its team's due pending jobs in the queue in the cycle's order
    (priority desc, then deadline, earliest first and none last, then age, then id), how
    many there are, and of all teams, how many teams they are, and the quota against what
    the queue holds. Between teams of a queue the order moves with what each holds
    (`resources.placement._Backlog`), so the position is within the job's team."""
    due_pending = Q(status=JobStatus.PENDING) & (
        Q(not_before__isnull=True) | Q(not_before__lte=now)
    )
    if job.deadline is None:
        earlier, same = Q(deadline__isnull=False), Q(deadline__isnull=True)
    else:
        earlier, same = Q(deadline__lt=job.deadline), Q(deadline=job.deadline)
    ahead = Q(priority__gt=job.priority) | Q(priority=job.priority) & (
        earlier
        | same & Q(created_at__lt=job.created_at)
        | same & Q(created_at=job.created_at, id__lt=job.pk)
    )
    own = Q(team_id=job.team_id)
    counts = Job.objects.filter(due_pending, queue_id=job.queue_id).aggregate(
        pending=Count("id"),
        team_pending=Count("id", filter=own),
        ahead=Count("id", filter=own & ahead),
        teams=Count("team_id", distinct=True),
    )
    queue = job.queue
    state = QueueState(
        id=queue.pk,
        name=queue.name,
        weight=queue.weight,
        priority=queue.priority,
        quota_cpu_millis=queue.quota_cpu_millis,
        quota_memory_mb=queue.quota_memory_mb,
        quota_gpu=queue.quota_gpu,
        allocated=queue_allocated(queue=queue),
    )
    return {
        "name": queue.name,
        "position": counts["ahead"] + 1 if due else None,
        "pending": counts["pending"],
        "team_pending": counts["team_pending"],
        "teams": counts["teams"],
        "team_weight": job.team.fair_share_weight,
        "team_past_share": job.team.past_share,
        "weight": queue.weight,
        "priority": queue.priority,
        "quota": _amounts(state.quota_cpu_millis, state.quota_memory_mb, state.quota_gpu),
        "allocated": _amounts(
            state.allocated.cpu_millis, state.allocated.memory_mb, state.allocated.gpu
        ),
        "exceeds_quota": not state.within_quota(request),
    }


def _position_words(queue: dict) -> str:
    words = f" It is number {queue['position']} of {queue['team_pending']}"
    if queue["teams"] <= 1:
        return f"{words} in queue {queue['name']}."
    others = queue["teams"] - 1
    return (
        f"{words} of its team's in queue {queue['name']}, where {others} other "
        f"team{'s' if others > 1 else ''} wait{'' if others > 1 else 's'} too: the team "
        "holding the least of the queue for its weight goes first."
    )


def _amounts(cpu_millis: int | None, memory_mb: int | None, gpu: int | None) -> dict:
    return {
        "cpu": None if cpu_millis is None else cpu_millis / 1000,
        "memory_mb": memory_mb,
        "gpu": gpu,
    }


# --- The nodes -------------------------------------------------------------------------


@dataclass
class NodeGroup:
    verdict: str
    detail: str
    names: list[str] = field(default_factory=list)
    count: int = 0

    def add(self, name: str) -> None:
        self.count += 1
        if len(self.names) < NODES_NAMED_PER_GROUP:
            self.names.append(name)

    def as_json(self) -> dict:
        return {
            "verdict": self.verdict,
            "detail": self.detail,
            "nodes": self.names,
            "count": self.count,
        }


def _nodes() -> list[Node]:
    return list(
        Node.objects.only(
            "name",
            "status",
            "labels",
            "cpu_millis",
            "memory_mb",
            "gpu",
            "allocated_cpu_millis",
            "allocated_memory_mb",
            "allocated_gpu",
        ).order_by("name")
    )


def node_groups(*, request: Request, nodes: list[Node]) -> list[NodeGroup]:
    """Each node's verdict for the request, grouped by verdict and detail. A node that
    is not ready is judged by its status alone, as the cycle never looks at it; a ready
    one by its labels, then by what it has free (and whether it could ever hold it)."""
    groups: dict[tuple[str, str], NodeGroup] = {}
    short: dict[tuple, list[Node]] = {}
    for node in nodes:
        if node.status != NodeStatus.READY:
            verdict, detail = NOT_READY, node.status
        else:
            slot = NodeSlot.of(node)
            if not matches_selector(slot, request.node_selector):
                verdict, detail = SELECTOR, _lacking_labels(slot, request)
            elif fits_now(slot, request):
                verdict, detail = FITS, "has room now"
            else:
                # The exact free amounts differ from node to node: group by which
                # resources are short, and whether the node is too small or only busy.
                short.setdefault(_shortage_key(node, request), []).append(node)
                continue
        groups.setdefault((verdict, detail), NodeGroup(verdict, detail)).add(node.name)
    for key, members in short.items():
        group = NodeGroup(SHORT, _shortage_detail(key, members, request))
        for node in members:
            group.add(node.name)
        groups[SHORT, group.detail] = group
    return sorted(groups.values(), key=lambda g: (VERDICT_ORDER.index(g.verdict), g.detail))


def gang_room(*, tasks: int, request: Request, nodes: list[Node]) -> dict:
    """How many of a gang's tasks the ready nodes (with its labels) have room for now,
    each task needing the whole request on one node, and on which nodes."""
    room, holders = 0, []
    for node in nodes:
        slot = NodeSlot.of(node)
        if node.status != NodeStatus.READY or not matches_selector(slot, request.node_selector):
            continue
        fitting = min(
            free // wanted
            for free, wanted in (
                (slot.free_cpu_millis, request.cpu_millis),
                (slot.free_memory_mb, request.memory_mb),
                (slot.free_gpu, request.gpu),
            )
            if wanted
        )
        if fitting > 0:
            room += fitting
            holders.append(node.name)
    each = f"{_format('cpu', request.cpu_millis)} CPU, {request.memory_mb} MB memory" + (
        f", {request.gpu} GPU" if request.gpu else ""
    )
    found = f"room for {room} found" + (
        f" on {len(holders)} node(s): {', '.join(holders[:NODES_NAMED_PER_GROUP])}"
        if holders
        else ""
    )
    return {
        "tasks": tasks,
        "room_now": room,
        "nodes": holders[:NODES_NAMED_PER_GROUP],
        "node_count": len(holders),
        "summary": f"needs {tasks} tasks of {each} free at once; {found}.",
    }


def _lacking_labels(slot: NodeSlot, request: Request) -> str:
    missing = [
        f"{key}={value}"
        for key, value in sorted(request.node_selector.items())
        if slot.labels.get(key) != value
    ]
    return "lacks label " + ", ".join(missing)


# (resource name, request attribute, capacity attribute, free attribute, unit)
_RESOURCES = (
    ("cpu", "cpu_millis", "cpu_millis", "free_cpu_millis", "CPU"),
    ("memory", "memory_mb", "memory_mb", "free_memory_mb", "MB memory"),
    ("gpu", "gpu", "gpu", "free_gpu", "GPU"),
)


def _shortage_key(node: Node, request: Request) -> tuple:
    """Which resources the node lacks, and whether it lacks them even when empty."""
    return tuple(
        (name, getattr(node, capacity) < getattr(request, wanted))
        for name, wanted, capacity, free, _ in _RESOURCES
        if getattr(node, free) < getattr(request, wanted)
    )


def _shortage_detail(key: tuple, members: list[Node], request: Request) -> str:
    """e.g. "needs 2 CPU, 0.5 free" or, across nodes that differ, "at most 1.5 free"."""
    parts = []
    for name, too_small in key:
        _, wanted, capacity, free, unit = next(r for r in _RESOURCES if r[0] == name)
        have = {getattr(node, capacity if too_small else free) for node in members}
        amount = _format(name, max(have))
        prefix = "" if len(have) == 1 else "at most "
        if too_small:
            parts.append(
                f"needs {_format(name, getattr(request, wanted))} {unit}, "
                f"has {prefix}{amount} in all"
            )
        else:
            parts.append(
                f"needs {_format(name, getattr(request, wanted))} {unit}, {prefix}{amount} free"
            )
    return "; ".join(parts)


def _format(resource: str, amount: int) -> str:
    return f"{amount / 1000:g}" if resource == "cpu" else str(amount)


# --- In words --------------------------------------------------------------------------


def _not_pending_summary(job: Job) -> str:
    execution = job.last_execution
    on_node = f" on {execution.node.name}" if execution is not None else ""
    if job.status == JobStatus.RESERVED:
        return f"The job is placed{on_node} and about to start."
    if job.status == JobStatus.RUNNING:
        return f"The job is running{on_node}."
    if job.status == JobStatus.SUCCEEDED:
        return f"The job succeeded{on_node}."
    if job.status == JobStatus.FAILED:
        ended = "The job failed after its last retry"
        return ended + (" and waits in the dead-letter view." if job.is_dead_letter else ".")
    return "The job was cancelled."


def _held_array(job) -> int | None:
    """The id of the array job `job` is a task of, if a person holds that array."""
    if job.array_parent_id is None:
        return None
    held = Job.objects.filter(pk=job.array_parent_id, held_at__isnull=False)
    return job.array_parent_id if held.exists() else None


def _pending_summary(job, reason, due, retry, queue, groups, reservation=None) -> str:
    counts = dict.fromkeys(VERDICT_ORDER, 0)
    for group in groups:
        counts[group.verdict] += group.count
    held_array = _held_array(job)
    if held_array is not None and reason in (
        PendingReason.HELD,
        PendingReason.WAITING_ARRAY_SLOT,
    ):
        return (
            f"Its array job {held_array} is held: no task of it is placed or given a slot "
            f"until someone releases the array job (POST /api/jobs/{held_array}/release/)."
        )
    if reason == PendingReason.HELD:
        return (
            f"The job is held: it is not placed until someone releases it "
            f"(POST /api/jobs/{job.pk}/release/). It keeps its place in queue {queue['name']}."
        )
    if reason == WAITING_NOT_BEFORE:
        return f"The job waits for its start time, {job.not_before.isoformat()}."
    if reason == PendingReason.WAITING_RETRY and not due:
        why = f" (attempt {retry.attempt} after {retry.reason})" if retry else ""
        return f"The job waits to retry{why} at {job.not_before.isoformat()}."
    if reason == PendingReason.WAITING_DEPENDENCIES:
        return "The job waits for the jobs it depends on."
    if reason == PendingReason.QUEUE_QUOTA or queue["exceeds_quota"]:
        return (
            f"Queue {queue['name']} is at its quota: with this job its jobs would hold more "
            "than the quota allows; it runs when some of them finish."
        )
    if reason == PendingReason.UNSCHEDULABLE:
        return "No registered node could ever hold the job."
    if reason == PendingReason.CONCURRENCY_LIMIT:
        return _concurrency_limit_summary(job)
    if reason == PendingReason.WAITING_ARRAY_SLOT:
        return "The job waits for a slot of its array's parallelism; it runs when one frees."
    position = _position_words(queue)
    if reason == PendingReason.RESERVATION and reservation is not None:
        return f"The job is {_reservation_words(reservation)}.{position}"
    if reason == PendingReason.WOULD_DELAY_RESERVATION and reservation is not None:
        return (
            f"Held back: it would delay job {reservation['job']} "
            f"({_reservation_words(reservation)}).{position}"
        )
    if counts[FITS]:
        return (
            f"{counts[FITS]} ready node(s) have room for the job now; the next scheduling "
            f"cycle should place it.{position}"
        )
    if not counts[SHORT] and counts[SELECTOR]:
        return f"No ready node has the labels the job's node selector asks for.{position}"
    lacking = ", ".join(
        f"{counts[verdict]} {words}"
        for verdict, words in (
            (SHORT, "short of capacity"),
            (SELECTOR, "without the selected labels"),
            (NOT_READY, "not ready"),
        )
        if counts[verdict]
    )
    return f"No node can take the job now ({lacking or 'no nodes'}).{position}"


def _concurrency_limit_summary(job: Job) -> str:
    limit = ConcurrencyLimit.objects.filter(team_id=job.team_id, key=job.concurrency_key).first()
    if limit is None:  # removed since the last cycle looked
        return f"Its key {job.concurrency_key!r} has no limit now; the next cycle should place it."
    active = Job.objects.filter(
        team_id=job.team_id,
        concurrency_key=job.concurrency_key,
        status__in=ACTIVE_JOB_STATUSES,
        array_count__isnull=True,
    ).count()
    return (
        f"The team's concurrency limit for key {job.concurrency_key!r} allows "
        f"{limit.max_running} at once and {active} of its jobs hold a slot; it runs when "
        "one of them finishes."
    )
