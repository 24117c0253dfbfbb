"""Job definitions, jobs (requested runs) and executions (attempts on nodes)."""

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import BrinIndex, GinIndex
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Now

from common.lookups import TrigramContains


class JobKind(models.TextChoices):
    COMMAND = "command", "Command"
    CALLABLE = "callable", "Python callable"


class JobStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RESERVED = "reserved", "Reserved"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


TERMINAL_JOB_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
# Placed and not finished: what holds a concurrency slot.
ACTIVE_JOB_STATUSES = (JobStatus.RESERVED, JobStatus.RUNNING)


class PendingReason(models.TextChoices):
    # Empty: not waiting, or accepted and not yet looked at by a scheduling cycle.
    NONE = "", "None"
    WAITING_DEPENDENCIES = "waiting_dependencies", "Waiting for dependencies"
    WAITING_RETRY = "waiting_retry", "Waiting to retry"
    INSUFFICIENT_CAPACITY = "insufficient_capacity", "No node has free capacity"
    QUEUE_QUOTA = "queue_quota", "Queue quota reached"
    UNSCHEDULABLE = "unschedulable", "No node could ever hold it"
    NODE_SELECTOR = "node_selector", "No ready node matches the node selector"
    CONCURRENCY_LIMIT = "concurrency_limit", "Its team's concurrency limit for its key is reached"
    WAITING_ARRAY_SLOT = "waiting_array_slot", "Waiting for a slot of its array's parallelism"
    # The first job in the scheduler's order that found no room: room is reserved for it
    # (`reservation_node`, from `reservation_start_at` by the running jobs' time limits).
    RESERVATION = "reservation", "Room is reserved for it on a node"
    WOULD_DELAY_RESERVATION = (
        "would_delay_reservation",
        "Held back: starting it would delay a job with a reservation",
    )
    GANG_DOES_NOT_FIT = "gang_does_not_fit", "Its tasks do not all fit the free room at once"
    # Lower-priority executions on `reservation_node` are being preempted for it; the room
    # they free is held for it.
    PREEMPTING = "preempting", "Lower-priority work is being preempted for it"
    # Held by a person (`POST /api/jobs/{id}/hold/`) until one releases it (`release/`).
    HELD = "held", "Held: it waits until released"


# A pending job with one of these reasons is held: no scheduling cycle considers it until
# whoever holds it (its upstreams, its array, a person) releases it, in the transaction of
# the change that frees it: its reason is cleared and the scheduler woken.
HELD_REASONS = (
    PendingReason.WAITING_DEPENDENCIES,
    PendingReason.WAITING_ARRAY_SLOT,
    PendingReason.HELD,
)


class DependencyCondition(models.TextChoices):
    """When a dependency on an upstream job is met (Slurm's afterok, afternotok, afterany,
    after)."""

    SUCCEEDED = "succeeded", "The upstream succeeded"
    FAILED = "failed", "The upstream failed"
    FINISHED = "finished", "The upstream ended, however"
    STARTED = "started", "The upstream started running"


class OnUnsatisfied(models.TextChoices):
    CANCEL = "cancel", "Cancel the job"
    WAIT = "wait", "Leave it waiting"


class TriggerRule(models.TextChoices):
    """How a job's dependencies combine: each by its own condition (a job's depends_on),
    or a workflow step's rule over its upstream steps' outcomes."""

    EACH = "each", "Every dependency's own condition"
    ALL_SUCCEEDED = "all_succeeded", "Every upstream succeeded"
    ALL_FINISHED = "all_finished", "Every upstream ended"
    ANY_FAILED = "any_failed", "Some upstream failed"
    ALL_FAILED = "all_failed", "Every upstream failed"
    NONE_FAILED = "none_failed", "Every upstream ended and none failed"


# How a cancel for a dependency that can never be met starts its reason; a requeue of
# the upstream re-arms the jobs cancelled so.
DEPENDENCY_NEVER_SATISFIED = "dependency never satisfied: "


# Names for pending jobs with no reason stored. A job no cycle has looked at yet waits
# for the scheduler; one whose not_before has not come waits for its time (cycles read
# only due jobs), not for the scheduler.
WAITING_SCHEDULER = "waiting_scheduler"
WAITING_NOT_BEFORE = "waiting_not_before"


# The most tasks one gang may have.
GANG_TASKS_MAX = 256


def tasks_in_range(prefix: str) -> models.CheckConstraint:
    return models.CheckConstraint(
        condition=Q(tasks__gte=1, tasks__lte=GANG_TASKS_MAX), name=f"{prefix}_tasks_in_range"
    )


class ExecutionStatus(models.TextChoices):
    RESERVED = "reserved", "Reserved"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    LOST = "lost", "Lost"
    # Stopped to make room for a higher-priority job; the job runs again, no retry used.
    PREEMPTED = "preempted", "Preempted"


class JobSpec(models.Model):
    """What to run and what it needs: shared by definitions and the jobs made from them."""

    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=JobKind.choices, default=JobKind.COMMAND)
    command = models.JSONField(default=list, blank=True, help_text='argv, e.g. ["python", "-V"]')
    callable = models.CharField(
        max_length=200,
        blank=True,
        help_text="Dotted name from settings.JOB_CALLABLES, e.g. jobs.callables.echo_parameters",
    )
    env = models.JSONField(default=dict, blank=True, help_text='e.g. {"LOG_LEVEL": "debug"}')
    parameters = models.JSONField(default=dict, blank=True)
    cpu_millis = models.PositiveIntegerField(default=1000, help_text="Thousandths of a core.")
    memory_mb = models.PositiveIntegerField(default=256)
    gpu = models.PositiveIntegerField(default=0)
    queue = models.ForeignKey(
        "resources.Queue", on_delete=models.PROTECT, related_name="%(class)ss"
    )
    priority = models.IntegerField(default=0, help_text="Higher runs first.")
    max_retries = models.PositiveIntegerField(default=0)
    retry_backoff_seconds = models.PositiveIntegerField(default=10)
    timeout_seconds = models.PositiveIntegerField(null=True, blank=True)
    # The most CPU time each of its processes may use, in seconds (RLIMIT_CPU); none is
    # no limit. The timeout bounds wall time, a cgroup the rate.
    cpu_time_limit_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        db_default=None,
        help_text="CPU seconds each of its processes may use, e.g. 3600; empty: no limit.",
    )
    node_selector = models.JSONField(default=dict, blank=True, help_text='e.g. {"zone": "b"}')
    # Columns added since the first release have database defaults as well, so rows that
    # benches and bulk loads insert with SQL need not name them.
    concurrency_key = models.CharField(
        max_length=100,
        blank=True,
        db_default="",
        help_text='At most its team\'s ConcurrencyLimit for this key run at once, e.g. "db"',
    )
    # A gang: this many executions per attempt, each with the resources above, placed
    # together or not at all (see README, "Gangs").
    tasks = models.PositiveIntegerField(
        default=1, db_default=1, help_text=f"Executions run together, 1 to {GANG_TASKS_MAX}."
    )
    preemptible = models.BooleanField(
        null=True,
        blank=True,
        db_default=None,
        help_text="May higher-priority work preempt it? Empty: its queue's default.",
    )

    class Meta:
        abstract = True


def kind_matches_target(prefix: str) -> models.CheckConstraint:
    """A command job names no callable and a callable job names one."""
    return models.CheckConstraint(
        condition=Q(kind=JobKind.COMMAND, callable="")
        | (Q(kind=JobKind.CALLABLE) & ~Q(callable="")),
        name=f"{prefix}_kind_matches_target",
    )


class JobDefinition(JobSpec):
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="definitions")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["team", "name"], name="definition_team_name_unique"),
            models.CheckConstraint(condition=Q(cpu_millis__gte=1), name="definition_cpu_positive"),
            kind_matches_target("definition"),
            tasks_in_range("definition"),
        ]

    def __str__(self):
        return f"{self.team}/{self.name}"


# The dead-letter rule: a failed job stays in the dead-letter view until it is requeued
# (it is no longer failed) or acknowledged. `Job.objects.dead_letter()` and
# `Job.is_dead_letter` are its only spellings.
DEAD_LETTER = Q(status=JobStatus.FAILED, acknowledged_at__isnull=True)


class JobQuerySet(models.QuerySet):
    def dead_letter(self) -> "JobQuerySet":
        return self.filter(DEAD_LETTER)

    def not_dead_letter(self) -> "JobQuerySet":
        return self.exclude(DEAD_LETTER)


class Job(JobSpec):
    # A foreign key that leads an index below (team_id, created_at, ...) gets no index of
    # its own: every index is written on each of a job's status changes.
    team = models.ForeignKey(
        "accounts.Team", on_delete=models.CASCADE, related_name="jobs", db_index=False
    )
    definition = models.ForeignKey(
        JobDefinition, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.PENDING)
    pending_reason = models.CharField(
        max_length=32, choices=PendingReason.choices, default=PendingReason.NONE, blank=True
    )
    idempotency_key = models.CharField(max_length=200, blank=True)
    not_before = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_execution = models.ForeignKey(
        "JobExecution", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Set by a cancel of a running job; its node kills the process group and confirms.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # A failed job is in the dead-letter view until it is requeued or acknowledged.
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    # Why it was cancelled when not by a person, e.g. "dependency never satisfied: job 12
    # failed".
    cancel_reason = models.TextField(blank=True, db_default="")
    # An array job a person holds (`POST .../hold/`): none of its tasks is released for a
    # slot or placed until it is released.
    held_at = models.DateTimeField(null=True, blank=True)
    # Dependencies (JobDependency): what to do when they can never be met, and how they
    # combine (each its own condition, or a workflow step's trigger rule).
    on_unsatisfied = models.CharField(
        max_length=8,
        choices=OnUnsatisfied.choices,
        default=OnUnsatisfied.CANCEL,
        db_default=OnUnsatisfied.CANCEL,
    )
    trigger_rule = models.CharField(
        max_length=16, choices=TriggerRule.choices, default=TriggerRule.EACH, db_default="each"
    )
    workflow = models.ForeignKey(
        "Workflow", null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )
    # An array job runs as `array_count` tasks (jobs with it as `array_parent`), at most
    # `array_parallelism` of them at once; it has no execution of its own.
    array_count = models.PositiveIntegerField(null=True, blank=True)
    array_parallelism = models.PositiveIntegerField(null=True, blank=True)
    array_parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="array_tasks",
        db_index=False,
    )
    array_index = models.PositiveIntegerField(null=True, blank=True)
    # Among jobs of equal priority, earlier deadlines are placed first; a job not ended
    # by its deadline is cancelled (stopped, if running) with the reason "deadline passed".
    deadline = models.DateTimeField(null=True, blank=True)
    # Where and when (by the running executions' time limits) room is reserved for it;
    # meaningful only while its pending reason is `reservation`, or `preempting` (the node
    # its victims run on, and when their grace ends).
    reservation_node = models.ForeignKey(
        "nodes.Node",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )
    reservation_start_at = models.DateTimeField(null=True, blank=True)
    # The node of each of its tasks' reserved room, `reservation_node` first (one entry
    # for a single job; a gang's may name a node once per task it holds room for there).
    # (A JSON list, not an array column: an array column would keep bulk inserts of jobs,
    # such as an array job's tasks, from Django's fast UNNEST path.)
    reservation_nodes = models.JSONField(null=True, blank=True)
    # Set from its queue's default at submission when the spec says nothing.
    preemptible = models.BooleanField(
        default=False,
        db_default=False,
        help_text="May higher-priority work preempt it (stop it and run it again later)?",
    )
    # Attempts that ended preempted: they do not count against max_retries.
    preemptions = models.PositiveIntegerField(default=0, db_default=0)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=JobStatus.values), name="job_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(pending_reason__in=PendingReason.values),
                name="job_pending_reason_valid",
            ),
            models.CheckConstraint(
                condition=Q(status=JobStatus.PENDING) | Q(pending_reason=""),
                name="job_pending_reason_only_when_pending",
            ),
            models.CheckConstraint(condition=Q(cpu_millis__gte=1), name="job_cpu_positive"),
            tasks_in_range("job"),
            # A gang's tasks are its executions; an array's tasks are jobs of their own.
            models.CheckConstraint(
                condition=Q(tasks=1) | Q(array_count__isnull=True, array_parent__isnull=True),
                name="job_gang_is_no_array",
            ),
            models.UniqueConstraint(
                fields=["team", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="job_idempotency_key_unique_per_team",
            ),
            kind_matches_target("job"),
            models.CheckConstraint(
                condition=Q(on_unsatisfied__in=OnUnsatisfied.values),
                name="job_on_unsatisfied_valid",
            ),
            models.CheckConstraint(
                condition=Q(trigger_rule__in=TriggerRule.values), name="job_trigger_rule_valid"
            ),
            models.CheckConstraint(
                condition=Q(array_count__isnull=True, array_parallelism__isnull=True)
                | Q(array_count__gte=1, array_parallelism__gte=1),
                name="job_array_count_and_parallelism",
            ),
            models.CheckConstraint(
                condition=Q(array_parent__isnull=True, array_index__isnull=True)
                | Q(
                    array_parent__isnull=False, array_index__isnull=False, array_count__isnull=True
                ),
                name="job_array_task_has_index",
            ),
            models.CheckConstraint(
                condition=~Q(pending_reason=PendingReason.WAITING_ARRAY_SLOT)
                | Q(array_parent__isnull=False),
                name="job_array_slot_only_for_tasks",
            ),
            models.UniqueConstraint(
                fields=["array_parent", "array_index"], name="job_array_index_unique"
            ),
        ]
        indexes = [
            # Used by the scheduling cycle: the teams with pending jobs in each queue, and
            # each team's pending jobs there that are not held, highest priority, then
            # earliest deadline, then oldest first (fair share within a queue). Jobs a
            # person holds are few and stay in it: the cycle's NOT IN HELD_REASONS implies
            # this condition, so the index serves it, and adding that reason rebuilt no
            # index.
            models.Index(
                F("queue"),
                F("team"),
                F("priority").desc(),
                F("deadline").asc(nulls_last=True),
                F("created_at"),
                F("id"),
                name="job_pending_by_queue_team",
                condition=Q(status=JobStatus.PENDING)
                & ~Q(
                    pending_reason__in=(
                        PendingReason.WAITING_DEPENDENCIES,
                        PendingReason.WAITING_ARRAY_SLOT,
                    )
                ),
            ),
            # Used by placement on freed room and /why/: the jobs room is reserved for.
            models.Index(
                fields=["reservation_node"],
                name="job_reservation_by_node",
                condition=Q(status=JobStatus.PENDING, pending_reason=PendingReason.RESERVATION),
            ),
            # Used by placement on freed room (does any job placed have no time limit; is
            # a gang waiting for room?).
            models.Index(
                fields=["queue"],
                name="job_live_without_limit",
                condition=Q(status__in=ACTIVE_JOB_STATUSES, timeout_seconds__isnull=True),
            ),
            models.Index(
                fields=["queue"],
                name="job_gang_waiting",
                condition=Q(
                    status=JobStatus.PENDING, pending_reason=PendingReason.GANG_DOES_NOT_FIT
                ),
            ),
            # Used by preemption: running jobs that may be preempted.
            models.Index(
                F("priority"),
                name="job_running_preemptible",
                condition=Q(status=JobStatus.RUNNING, preemptible=True),
            ),
            # Used by placement: the jobs room is held for while their victims stop.
            models.Index(
                fields=["reservation_node"],
                name="job_preempting_by_node",
                condition=Q(status=JobStatus.PENDING, pending_reason=PendingReason.PREEMPTING),
            ),
            # Used by the jobs list: newest first, by cursor, alone or under one filter
            # (a member's list is also filtered by team).
            *(
                models.Index(*fields, F("created_at").desc(), F("id").desc(), name=name)
                for name, fields in (
                    ("job_created", ()),
                    ("job_status_created", ("status",)),
                    ("job_team_created", ("team",)),
                    ("job_team_status_created", ("team", "status")),
                    ("job_queue_created", ("queue",)),
                    ("job_name_created", ("name",)),
                    ("job_submitted_by_created", ("submitted_by",)),
                )
            ),
            # Used by the dead-letter view: failed and not yet acknowledged.
            models.Index(
                F("created_at").desc(),
                F("id").desc(),
                name="job_dead_letter",
                condition=DEAD_LETTER,
            ),
            # Used by the overview's chart: jobs that ended in the last hour.
            models.Index(
                F("finished_at"), name="job_finished", condition=Q(finished_at__isnull=False)
            ),
            # Used by the deadline check: jobs not ended, by deadline.
            models.Index(
                F("deadline"),
                name="job_live_by_deadline",
                condition=Q(deadline__isnull=False)
                & Q(status__in=(JobStatus.PENDING, *ACTIVE_JOB_STATUSES)),
            ),
            # Used by placement: the jobs of a team's concurrency key that hold a slot.
            models.Index(
                F("team"),
                F("concurrency_key"),
                name="job_active_by_concurrency_key",
                condition=Q(status__in=ACTIVE_JOB_STATUSES)
                & ~Q(concurrency_key="")
                & Q(array_count__isnull=True),
            ),
        ]

    def __str__(self):
        return f"job {self.pk} {self.name} ({self.status})"

    @property
    def is_dead_letter(self) -> bool:
        return self.status == JobStatus.FAILED and self.acknowledged_at is None

    @property
    def waiting_because(self) -> str:
        """Why a pending job waits, in words; empty for a job that is not pending."""
        if self.status != JobStatus.PENDING:
            return ""
        return (
            self.get_pending_reason_display()
            if self.pending_reason
            else "Waiting for the scheduler"
        )

    @property
    def resources(self) -> dict:
        return {"cpu_millis": self.cpu_millis, "memory_mb": self.memory_mb, "gpu": self.gpu}

    @property
    def depends_on(self) -> list[dict]:
        return [
            {"job": upstream, "on": on}
            for upstream, on in self.dependencies.order_by("upstream_id").values_list(
                "upstream_id", "on"
            )
        ]


class JobExecution(models.Model):
    """One attempt of a job on one node (one task of it, for a gang: an attempt of a job
    with `tasks` N has N executions, `task_index` 0 to N-1). Its token is what every
    message carries."""

    # Indexed by the (job, attempt, task_index) and (node, status) keys below, and the token by its
    # unique constraint (no second index for LIKE, which nothing asks of a token).
    job = models.ForeignKey(
        Job, on_delete=models.CASCADE, related_name="executions", db_index=False
    )
    attempt = models.PositiveIntegerField()
    task_index = models.PositiveIntegerField(default=0, db_default=0)
    node = models.ForeignKey(
        "nodes.Node", on_delete=models.PROTECT, related_name="executions", db_index=False
    )
    token = models.CharField(max_length=64)
    status = models.CharField(
        max_length=16, choices=ExecutionStatus.choices, default=ExecutionStatus.RESERVED
    )
    exit_code = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    reserved_at = models.DateTimeField()
    # When reconciliation last sent its message again (the cycle's own send is at
    # reserved_at), so a backlog waiting for worker slots is not re-sent every pass.
    republished_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    log_path = models.CharField(max_length=500, blank=True)
    log_tail = models.TextField(blank=True)
    # The node's GPU devices (indices) the attempt ran on, as its agent reports them
    # with its outcome.
    gpu_ids = ArrayField(
        models.PositiveSmallIntegerField(), default=list, db_default=[], blank=True
    )
    # Set when another task of its gang ended badly: its node stops it, as for a cancel.
    stop_requested_at = models.DateTimeField(null=True, blank=True)
    # Set when the scheduler chose it to make room for `preempted_by`: its node stops it.
    preempt_requested_at = models.DateTimeField(null=True, blank=True)
    preempted_by = models.ForeignKey(
        Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    # Counted in ExecutionTally (set once it has ended and been folded, never unset).
    metrics_folded = models.BooleanField(db_default=False, editable=False)

    class Meta:
        ordering = ["job", "attempt", "task_index"]
        constraints = [
            models.UniqueConstraint(
                fields=["job", "attempt", "task_index"], name="execution_job_attempt_task_unique"
            ),
            models.UniqueConstraint(fields=["token"], name="execution_token_unique"),
            models.CheckConstraint(condition=Q(attempt__gte=1), name="execution_attempt_positive"),
            models.CheckConstraint(
                condition=Q(status__in=ExecutionStatus.values), name="execution_status_valid"
            ),
        ]
        indexes = [
            models.Index(fields=["node", "status"], name="execution_node_status"),
            # Used by the metrics summary: attempts that ended in its window, or have not
            # ended (NULL).
            models.Index(fields=["finished_at"], name="execution_finished"),
            # Used by placement: the executions being preempted for a job.
            models.Index(
                fields=["preempted_by"],
                name="execution_preempted_by",
                condition=Q(preempted_by__isnull=False),
            ),
            # Used by reconciliation: reserved executions no node has claimed yet.
            models.Index(
                fields=["reserved_at"],
                name="execution_unclaimed",
                condition=Q(status=ExecutionStatus.RESERVED),
            ),
            # Used by the metrics: the executions not yet in the tallies (live, or ended
            # since the last fold).
            models.Index(
                fields=["id"], name="execution_unfolded", condition=Q(metrics_folded=False)
            ),
        ]

    def __str__(self):
        return self.token


class JobRetry(models.Model):
    """A retry planned for a job: which attempt will run, why, and from when."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="retries")
    attempt = models.PositiveIntegerField(help_text="The attempt number the retry will run as.")
    reason = models.CharField(max_length=500, help_text='e.g. "exit code 3", "node lost"')
    due_at = models.DateTimeField()
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Who requeued the job by hand; empty for automatic retries.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Counted in RetryTally (set once folded, never unset).
    metrics_folded = models.BooleanField(db_default=False, editable=False)

    class Meta:
        ordering = ["job", "attempt"]
        constraints = [
            models.UniqueConstraint(fields=["job", "attempt"], name="retry_job_attempt_unique"),
            models.CheckConstraint(condition=Q(attempt__gte=1), name="retry_attempt_positive"),
        ]
        indexes = [
            # Used by the metrics: the retries not yet in the tally.
            models.Index(fields=["id"], name="retry_unfolded", condition=Q(metrics_folded=False)),
        ]

    def __str__(self):
        return f"retry of job {self.job_id} as attempt {self.attempt}: {self.reason}"


def execution_token(job_id: int, attempt: int, task_index: int = 0) -> str:
    """The token of an attempt's execution; a gang's other tasks add their index."""
    token = f"job-{job_id}-attempt-{attempt}"
    return f"{token}-task-{task_index}" if task_index else token


class ConcurrencyPolicy(models.TextChoices):
    ALLOW = "allow", "Allow overlapping runs"
    FORBID = "forbid", "Skip a run while the previous one is active"
    REPLACE = "replace", "Cancel the active run and start the new one"


class MisfirePolicy(models.TextChoices):
    SKIP = "skip", "Skip runs missed while beat was down"
    RUN_ONCE = "run_once", "Run one catch-up for the runs missed while beat was down"


class JobSchedule(models.Model):
    """A job definition run on a cron expression (in a time zone), an interval, or once.

    Kept in sync with exactly one django-celery-beat PeriodicTask by jobs.schedules; beat
    only nudges, and the trigger works out which due time is up from the fields here.
    """

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="schedules")
    name = models.CharField(max_length=200)
    # A definition with schedules cannot be deleted, except with its whole team.
    definition = models.ForeignKey(
        JobDefinition, null=True, blank=True, on_delete=models.RESTRICT, related_name="schedules"
    )
    # Or a workflow template: each fire creates a workflow from it (exactly one of the two).
    workflow_template = models.ForeignKey(
        "WorkflowTemplate",
        null=True,
        blank=True,
        on_delete=models.RESTRICT,
        related_name="schedules",
    )
    cron = models.CharField(
        max_length=200, blank=True, help_text='Five fields, e.g. "*/15 9-17 * * 1-5"'
    )
    timezone = models.CharField(
        max_length=64, default="UTC", help_text="IANA zone of the cron, e.g. Europe/Berlin"
    )
    interval_seconds = models.PositiveIntegerField(null=True, blank=True)
    run_at = models.DateTimeField(null=True, blank=True, help_text="The one time a one-off runs.")
    start_at = models.DateTimeField(null=True, blank=True)
    end_at = models.DateTimeField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    concurrency_policy = models.CharField(
        max_length=16, choices=ConcurrencyPolicy.choices, default=ConcurrencyPolicy.ALLOW
    )
    misfire_policy = models.CharField(
        max_length=16, choices=MisfirePolicy.choices, default=MisfirePolicy.RUN_ONCE
    )
    # Where an interval schedule's due times start: start_at, or one interval after the
    # schedule (or its timing) was last saved.
    anchor_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_fire_at = models.DateTimeField(null=True, blank=True, editable=False)
    next_fire_at = models.DateTimeField(null=True, blank=True, editable=False)
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask",
        null=True,
        blank=True,
        editable=False,
        on_delete=models.SET_NULL,
        related_name="job_schedule",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["team", "name"], name="schedule_team_name_unique"),
            models.CheckConstraint(
                condition=(
                    (~Q(cron="") & Q(interval_seconds__isnull=True) & Q(run_at__isnull=True))
                    | (Q(cron="") & Q(interval_seconds__isnull=False) & Q(run_at__isnull=True))
                    | (Q(cron="") & Q(interval_seconds__isnull=True) & Q(run_at__isnull=False))
                ),
                name="schedule_exactly_one_kind",
            ),
            models.CheckConstraint(
                condition=Q(interval_seconds__isnull=True) | Q(interval_seconds__gte=1),
                name="schedule_interval_positive",
            ),
            models.CheckConstraint(
                condition=Q(start_at__isnull=True)
                | Q(end_at__isnull=True)
                | Q(end_at__gt=F("start_at")),
                name="schedule_end_after_start",
            ),
            models.CheckConstraint(
                condition=Q(concurrency_policy__in=ConcurrencyPolicy.values),
                name="schedule_concurrency_policy_valid",
            ),
            models.CheckConstraint(
                condition=Q(misfire_policy__in=MisfirePolicy.values),
                name="schedule_misfire_policy_valid",
            ),
            models.CheckConstraint(
                condition=Q(definition__isnull=True) ^ Q(workflow_template__isnull=True),
                name="schedule_runs_a_definition_or_a_workflow_template",
            ),
        ]
        indexes = [
            # Used by beat (jobs.beat) every tick: which enabled schedules are due next.
            models.Index(
                fields=["next_fire_at"],
                condition=Q(enabled=True, next_fire_at__isnull=False),
                name="schedule_due_idx",
            ),
        ]

    def __str__(self):
        return f"{self.team}/{self.name}"

    @property
    def kind(self) -> str:
        if self.cron:
            return "cron"
        return "interval" if self.interval_seconds is not None else "once"


class ScheduleRunOutcome(models.TextChoices):
    SUBMITTED = "submitted", "Job submitted"
    SKIPPED_RUNNING = "skipped_running", "Skipped: the previous run is still active"
    SKIPPED_MISFIRE = "skipped_misfire", "Skipped: missed while beat was down"
    SUBMIT_FAILED = "submit_failed", "The job could not be submitted"
    BACKFILLED = "backfilled", "Job submitted by a backfill of past due times"


class JobScheduleRun(models.Model):
    """What a schedule did at one due time: the job it submitted, or why it did not."""

    schedule = models.ForeignKey(JobSchedule, on_delete=models.CASCADE, related_name="runs")
    due_at = models.DateTimeField()
    fired_at = models.DateTimeField()
    outcome = models.CharField(max_length=16, choices=ScheduleRunOutcome.choices)
    job = models.ForeignKey(
        Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="schedule_runs"
    )
    # Due times before this one that passed with no fire (beat was down), folded into it.
    missed = models.PositiveIntegerField(default=0)
    catch_up = models.BooleanField(default=False)
    cancelled_job = models.ForeignKey(
        Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    error = models.TextField(blank=True)
    # What a workflow template's schedule created at this due time.
    workflow = models.ForeignKey(
        "Workflow", null=True, blank=True, on_delete=models.SET_NULL, related_name="schedule_runs"
    )
    # Counted in ScheduleRunTally (set once folded, never unset).
    metrics_folded = models.BooleanField(db_default=False, editable=False)

    class Meta:
        ordering = ["-due_at"]
        constraints = [
            # One run per due time: what makes two beats or a redelivered trigger harmless.
            models.UniqueConstraint(
                fields=["schedule", "due_at"], name="schedule_run_once_per_due"
            ),
            models.CheckConstraint(
                condition=Q(outcome__in=ScheduleRunOutcome.values),
                name="schedule_run_outcome_valid",
            ),
        ]
        indexes = [
            # Used by the metrics: the runs not yet in the tally.
            models.Index(
                fields=["id"], name="schedule_run_unfolded", condition=Q(metrics_folded=False)
            ),
        ]

    def __str__(self):
        return f"{self.schedule} at {self.due_at.isoformat()}: {self.outcome}"


class JobDependency(models.Model):
    """`job` waits for `upstream` to meet `on`; held (waiting_dependencies) until then."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="dependencies")
    upstream = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="dependents")
    on = models.CharField(
        max_length=16, choices=DependencyCondition.choices, default=DependencyCondition.SUCCEEDED
    )

    class Meta:
        ordering = ["job", "upstream"]
        constraints = [
            models.UniqueConstraint(fields=["job", "upstream"], name="dependency_pair_unique"),
            models.CheckConstraint(
                condition=~Q(job=F("upstream")), name="dependency_not_on_itself"
            ),
            models.CheckConstraint(
                condition=Q(on__in=DependencyCondition.values), name="dependency_on_valid"
            ),
        ]

    def __str__(self):
        return f"job {self.job_id} after job {self.upstream_id} {self.on}"


class WorkflowStatus(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class Workflow(models.Model):
    """A DAG of steps, each one job, created at once; its status follows its steps'."""

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="workflows")
    name = models.CharField(max_length=200)
    parameters = models.JSONField(default=dict, blank=True, help_text="{{ params.NAME }} values")
    max_parallel = models.PositiveIntegerField(
        null=True, blank=True, help_text="At most this many steps active at once; empty: no limit."
    )
    status = models.CharField(
        max_length=16, choices=WorkflowStatus.choices, default=WorkflowStatus.RUNNING
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    template = models.ForeignKey(
        "WorkflowTemplate",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="workflows",
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=WorkflowStatus.values), name="workflow_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(max_parallel__isnull=True) | Q(max_parallel__gte=1),
                name="workflow_max_parallel_positive",
            ),
        ]
        indexes = [
            # Used by the workflows list: newest first, all of them (staff), by team and
            # by status.
            models.Index(F("created_at").desc(), F("id").desc(), name="workflow_created"),
            models.Index(
                "team", F("created_at").desc(), F("id").desc(), name="workflow_team_created"
            ),
            models.Index(
                "status", F("created_at").desc(), F("id").desc(), name="workflow_status_created"
            ),
            # Used by retention: ended workflows, oldest end first.
            models.Index(
                F("finished_at"),
                F("id"),
                name="workflow_finished",
                condition=Q(finished_at__isnull=False),
            ),
        ]

    def __str__(self):
        return f"workflow {self.pk} {self.name} ({self.status})"


class WorkflowStep(models.Model):
    """One step of a workflow: its job, where its spec came from, and its upstream steps."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="steps")
    name = models.CharField(max_length=200)
    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="workflow_step")
    # A step made from a definition reads it again when a retry re-arms it, so a fixed
    # definition is what runs; its overrides (with parameters substituted) go over it.
    definition = models.ForeignKey(
        JobDefinition, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    overrides = models.JSONField(default=dict, blank=True)
    depends_on = models.JSONField(default=list, blank=True, help_text="Names of upstream steps.")
    trigger_rule = models.CharField(
        max_length=16, choices=TriggerRule.choices, default=TriggerRule.ALL_SUCCEEDED
    )

    class Meta:
        ordering = ["workflow", "id"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "name"], name="workflow_step_name_unique"),
            models.CheckConstraint(
                condition=Q(trigger_rule__in=TriggerRule.values) & ~Q(trigger_rule="each"),
                name="workflow_step_trigger_rule_valid",
            ),
        ]

    def __str__(self):
        return f"{self.workflow_id}/{self.name}"


class WorkflowTemplate(models.Model):
    """A workflow saved to be submitted again, with parameters, by hand or by schedules.
    Its steps are as POST /api/workflows/ takes them, checked when saved."""

    team = models.ForeignKey(
        "accounts.Team", on_delete=models.CASCADE, related_name="workflow_templates"
    )
    name = models.CharField(max_length=200)
    parameters = models.JSONField(default=dict, blank=True, help_text="Default parameters.")
    max_parallel = models.PositiveIntegerField(null=True, blank=True)
    steps = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["team", "name"], name="workflow_template_name_unique"),
            models.CheckConstraint(
                condition=Q(max_parallel__isnull=True) | Q(max_parallel__gte=1),
                name="workflow_template_max_parallel_positive",
            ),
        ]

    def __str__(self):
        return f"{self.team}/{self.name}"


class ConcurrencyLimit(models.Model):
    """The most jobs of one team with one `concurrency_key` that may be placed or running
    at once. Placement locks the row, so two placers cannot both take its last slot."""

    team = models.ForeignKey(
        "accounts.Team", on_delete=models.CASCADE, related_name="concurrency_limits"
    )
    key = models.CharField(max_length=100, help_text='The jobs\' concurrency_key, e.g. "db"')
    max_running = models.PositiveIntegerField(help_text="0 holds every job with the key.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key", "id"]
        constraints = [
            models.UniqueConstraint(fields=["team", "key"], name="concurrency_limit_team_key"),
            models.CheckConstraint(
                condition=Q(max_running__gte=0), name="concurrency_limit_max_running_valid"
            ),
            models.CheckConstraint(condition=~Q(key=""), name="concurrency_limit_key_not_empty"),
        ]

    def __str__(self):
        return f"{self.team}/{self.key}: at most {self.max_running}"


class JobLogChunk(models.Model):
    """A piece of one attempt's output, shipped by its node agent while the job runs, so
    the API serves any attempt's log whatever machine ran it. Lines are numbered from 1
    per attempt; `offset` is where the chunk starts in the attempt's output, in bytes.
    An attempt over JOB_LOG_SHIP_MAX_BYTES loses its oldest chunks: what is left starts
    past line 1 and byte 0, which says what was cut."""

    # Indexed by the unique constraint below, which starts with it.
    execution = models.ForeignKey(
        JobExecution, on_delete=models.CASCADE, related_name="log_chunks", db_index=False
    )
    seq = models.PositiveIntegerField(help_text="The chunk's place in its attempt, from 0.")
    first_line = models.PositiveIntegerField(help_text="The number of the chunk's first line.")
    offset = models.BigIntegerField(help_text="Bytes of the attempt's output before it.")
    text = models.TextField()
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["execution", "seq"]
        constraints = [
            # Also the index an attempt's log is read by, in order.
            models.UniqueConstraint(fields=["execution", "seq"], name="log_chunk_execution_seq"),
            models.CheckConstraint(condition=Q(first_line__gte=1), name="log_chunk_line_positive"),
            models.CheckConstraint(condition=Q(offset__gte=0), name="log_chunk_offset_positive"),
        ]
        indexes = [
            # Used by the log search (`GET /api/logs/?q=`): ILIKE '%text%' through trigrams.
            GinIndex(fields=["text"], opclasses=["gin_trgm_ops"], name="log_chunk_text_trgm"),
            # Used by the retention purge; chunks arrive in time order, so a BRIN stays tiny.
            BrinIndex(fields=["created_at"], name="log_chunk_created_brin"),
        ]

    def __str__(self):
        return f"log of execution {self.execution_id} from line {self.first_line}"


JobLogChunk._meta.get_field("text").register_lookup(TrigramContains)


class ExecutionTally(models.Model):
    """What folded executions count for in the metrics (see jobs.services.metrics_tallies),
    one row per group the scrape reads: by queue, status and run bucket (`of_waits`
    false; bucket -1 for executions that did not run), and by queue and wait bucket
    (`of_waits` true, status blank). Buckets are numbered as `width_bucket` numbers the
    metrics' bounds: the number of bounds at or above the value."""

    queue = models.ForeignKey("resources.Queue", on_delete=models.CASCADE, related_name="+")
    of_waits = models.BooleanField()
    status = models.CharField(max_length=16, blank=True)
    bucket = models.SmallIntegerField()
    executions = models.BigIntegerField()
    runs = models.BigIntegerField()
    run_seconds = models.FloatField()
    waits = models.BigIntegerField()
    wait_seconds = models.FloatField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["queue", "of_waits", "status", "bucket"], name="execution_tally_group"
            ),
            models.CheckConstraint(
                condition=Q(executions__gte=0, runs__gte=0, waits__gte=0),
                name="execution_tally_counts_positive",
            ),
        ]

    def __str__(self):
        return f"{self.queue_id} {self.status or 'waits'} {self.bucket}"


class ScheduleRunTally(models.Model):
    """Folded schedule runs (see jobs.services.metrics_tallies), by outcome and lateness
    bucket, numbered as ExecutionTally's are."""

    outcome = models.CharField(max_length=16, choices=ScheduleRunOutcome.choices)
    bucket = models.SmallIntegerField()
    runs = models.BigIntegerField()
    late_seconds = models.FloatField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["outcome", "bucket"], name="schedule_run_tally_group"),
            models.CheckConstraint(condition=Q(runs__gte=0), name="schedule_run_tally_positive"),
        ]

    def __str__(self):
        return f"{self.outcome} {self.bucket}: {self.runs}"


class RetryTally(models.Model):
    """Folded retries (see jobs.services.metrics_tallies), by their job's queue."""

    queue = models.OneToOneField("resources.Queue", on_delete=models.CASCADE, related_name="+")
    retries = models.BigIntegerField()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(retries__gte=0), name="retry_tally_positive"),
        ]

    def __str__(self):
        return f"{self.queue_id}: {self.retries}"


class UsageTally(models.Model):
    """What folded attempts used (see jobs.services.metrics_tallies), by UTC day, team,
    queue and submitter: the usage report's history, which outlives the jobs that
    retention purges. An attempt's run (start to end) is split between the days it spans;
    it counts as an attempt on the day it ended. Resource-seconds are its allocation's
    amounts times the seconds it ran that day."""

    day = models.DateField()
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="+")
    queue = models.ForeignKey(
        "resources.Queue", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    # The submitter's username when the attempt was folded (blank: none, such as a
    # deleted user's jobs): kept as text, so deleting a user keeps their history.
    username = models.CharField(max_length=150, blank=True)
    attempts = models.BigIntegerField()
    succeeded = models.BigIntegerField()
    run_seconds = models.FloatField()
    cpu_seconds = models.FloatField()
    memory_mb_seconds = models.FloatField()
    gpu_seconds = models.FloatField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "team", "queue", "username"], name="usage_tally_group"
            ),
            models.CheckConstraint(
                condition=Q(
                    attempts__gte=0,
                    succeeded__gte=0,
                    succeeded__lte=F("attempts"),
                    run_seconds__gte=0,
                    cpu_seconds__gte=0,
                    memory_mb_seconds__gte=0,
                    gpu_seconds__gte=0,
                ),
                name="usage_tally_positive",
            ),
        ]
        indexes = [
            # The report of one team over a span of days (the unique key serves all teams).
            models.Index(fields=["team", "day"], name="usage_tally_team_day"),
        ]

    def __str__(self):
        return f"{self.day} {self.team_id} {self.queue_id} {self.username or '-'}"
