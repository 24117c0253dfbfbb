"""The shape of `GET /api/jobs/{id}/why/`, for the OpenAPI schema; the answer itself is
made by `jobs.why_pending`."""

from rest_framework import serializers


class AmountsSerializer(serializers.Serializer):
    cpu = serializers.FloatField(allow_null=True, help_text="Cores; null is no limit.")
    memory_mb = serializers.IntegerField(allow_null=True)
    gpu = serializers.IntegerField(allow_null=True)


class WhyRetrySerializer(serializers.Serializer):
    attempt = serializers.IntegerField()
    reason = serializers.CharField(help_text='e.g. "exit code 3", "node lost"')
    due_at = serializers.DateTimeField()


class WhyQueueSerializer(serializers.Serializer):
    name = serializers.CharField()
    position = serializers.IntegerField(
        allow_null=True,
        help_text="1-based, among the queue's due pending jobs in the order the scheduler "
        "takes them (priority, then age); null while the job is not due.",
    )
    pending = serializers.IntegerField(help_text="The queue's due pending jobs.")
    weight = serializers.IntegerField()
    priority = serializers.IntegerField()
    quota = AmountsSerializer()
    allocated = AmountsSerializer(help_text="What the queue's jobs hold now.")
    exceeds_quota = serializers.BooleanField(
        help_text="Whether the job would take the queue over its quota."
    )


class WhyNodeGroupSerializer(serializers.Serializer):
    verdict = serializers.ChoiceField(choices=["fits", "short", "selector", "not_ready"])
    detail = serializers.CharField(help_text='e.g. "needs 2 CPU, 0.5 free", "lacks label zone=b"')
    nodes = serializers.ListField(
        child=serializers.CharField(), help_text="At most 20 of the group's node names."
    )
    count = serializers.IntegerField()


class WhyGangSerializer(serializers.Serializer):
    tasks = serializers.IntegerField()
    room_now = serializers.IntegerField(
        help_text="How many of its tasks the ready nodes have room for now."
    )
    nodes = serializers.ListField(
        child=serializers.CharField(), help_text="At most 20 of the nodes with room for a task."
    )
    node_count = serializers.IntegerField()
    summary = serializers.CharField(help_text='e.g. "needs 3 tasks of 1 CPU ...; room for 2 found"')


class WhyWaitsOnSerializer(serializers.Serializer):
    """One thing besides room that holds the job; the other fields depend on `kind`:
    `at` (start_time, retry_time, deadline), `count`, `unmet` and `jobs` (dependencies:
    the unmet upstreams, at most 20), `key` (concurrency_limit), `array`, `parallelism`
    and `active` (array_slot), `job`, `node`, `nodes` and `expected_start` (reservation:
    the one the job holds; would_delay: the one starting the job now would delay; `node`
    is the first of `nodes`, which are several for a gang's)."""

    kind = serializers.ChoiceField(
        choices=[
            "start_time",
            "retry_time",
            "dependencies",
            "concurrency_limit",
            "array_slot",
            "reservation",
            "would_delay",
            "deadline",
        ]
    )
    summary = serializers.CharField()


class WhyVictimSerializer(serializers.Serializer):
    job = serializers.IntegerField()
    token = serializers.CharField(help_text="The attempt, e.g. job-12-attempt-1")
    priority = serializers.IntegerField()
    node = serializers.CharField()


class WhyPreemptionSerializer(serializers.Serializer):
    state = serializers.ChoiceField(
        choices=["under_way", "would_preempt"],
        help_text="under_way: its victims are being stopped (reason preempting); "
        "would_preempt: the scheduler would stop these for it now.",
    )
    node = serializers.CharField(allow_null=True)
    grace_ends_at = serializers.DateTimeField(
        allow_null=True, help_text="When its victims are killed at the latest (under way)."
    )
    victims = WhyVictimSerializer(many=True)


class JobWhySerializer(serializers.Serializer):
    """Why the job waits; a job that is not pending has only the first four fields."""

    job = serializers.IntegerField()
    status = serializers.CharField()
    pending = serializers.BooleanField()
    summary = serializers.CharField()
    reason = serializers.CharField(
        required=False,
        help_text="The pending reason, or waiting_scheduler (no cycle has looked at it yet) "
        "or waiting_not_before (its not_before has not come).",
    )
    not_before = serializers.DateTimeField(required=False, allow_null=True)
    retry = WhyRetrySerializer(required=False, allow_null=True)
    queue = WhyQueueSerializer(required=False)
    waits_on = WhyWaitsOnSerializer(many=True, required=False)
    nodes = WhyNodeGroupSerializer(many=True, required=False)
    gang = WhyGangSerializer(
        required=False, allow_null=True, help_text="For a gang: the room for its tasks."
    )
    preemption = WhyPreemptionSerializer(
        required=False,
        allow_null=True,
        help_text="Which executions are (or would be) preempted for it; null when none.",
    )
