"""What the API reads as a job's spec: the input serializers for submitting a job inline
or from a definition, and for writing a definition."""

from decimal import Decimal

from rest_framework import serializers
from rest_framework.exceptions import PermissionDenied

from accounts.permissions import require_team_submitter, team_for_submission
from accounts.selectors import team_list_submittable, team_list_visible
from common.serializers import StrictSerializer
from resources.models import DEFAULT_QUEUE_NAME

from ..models import (
    GANG_TASKS_MAX,
    DependencyCondition,
    JobDefinition,
    JobKind,
    OnUnsatisfied,
)
from ..selectors import definition_list_visible
from ..services.arrays import MAX_ARRAY_COUNT
from ..services.specs import job_spec_limit_errors

MAX_ARGV = 256
MAX_ARG_LENGTH = 8192
VIEWERS_MAY_NOT_SUBMIT = "Viewers may look at this team's jobs but not submit them."
CONCURRENCY_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$"
CONCURRENCY_KEY_INVALID = "Letters, digits and _ . : / -, starting with a letter or digit."


class ResourcesSerializer(StrictSerializer):
    cpu = serializers.DecimalField(
        max_digits=9,
        decimal_places=3,
        min_value=Decimal("0.001"),
        default=Decimal(1),
        help_text="CPU cores, e.g. 0.5",
    )
    memory_mb = serializers.IntegerField(min_value=0, max_value=16 * 1024 * 1024, default=256)
    gpu = serializers.IntegerField(min_value=0, max_value=1024, default=0)


def _limit_errors(**field) -> list[str]:
    """The spec caps (jobs.services.specs) on one field, as that field's errors."""
    return next(iter(job_spec_limit_errors(**field).values()), [])


class SpecLimitsMixin:
    """Field-level checks of the free-form spec fields, shared by every serializer that
    takes them; the services check the same caps again on what they finally store."""

    def validate_env(self, value):
        if errors := _limit_errors(env=value):
            raise serializers.ValidationError(errors)
        return value

    def validate_parameters(self, value):
        if errors := _limit_errors(parameters=value):
            raise serializers.ValidationError(errors)
        return value

    def validate_node_selector(self, value):
        if errors := _limit_errors(node_selector=value):
            raise serializers.ValidationError(errors)
        return value


def env_field(**kwargs):
    return serializers.DictField(
        child=serializers.CharField(
            max_length=MAX_ARG_LENGTH, allow_blank=True, trim_whitespace=False
        ),
        **kwargs,
    )


def parameters_field(**kwargs):
    return serializers.DictField(
        help_text="Keyword arguments of a callable; JOB_PARAMETERS", **kwargs
    )


def concurrency_key_field(**kwargs):
    return serializers.RegexField(
        CONCURRENCY_KEY_PATTERN,
        max_length=100,
        allow_blank=True,
        error_messages={"invalid": CONCURRENCY_KEY_INVALID},
        help_text="Jobs of a team with the same key run at most its concurrency limit at "
        'once, e.g. "db"',
        **kwargs,
    )


def team_of_write(serializer: serializers.Serializer, slug: str):
    """The team a write names: a new object's, if the caller may change its objects (a
    viewer gets a 403 saying the serializer's `viewers_may_not`); a stored object's team
    cannot change."""
    if serializer.instance is not None:
        if slug != serializer.instance.team.slug:
            raise serializers.ValidationError("The team cannot change.")
        return serializer.instance.team
    user = serializer.context["request"].user
    return team_for_submission(user=user, slug=slug, viewers_may_not=serializer.viewers_may_not)


def definition_for_submission(*, user, pk: int, viewers_may_not: str) -> JobDefinition:
    """The definition with this id, if the user may submit jobs made from it; a viewer of
    its team gets a 403 saying `viewers_may_not`, anyone else a validation error."""
    definition = definition_list_visible(user=user).filter(pk=pk).first()
    if definition is None:
        raise serializers.ValidationError("No definition with this id in your teams.")
    require_team_submitter(user=user, team_id=definition.team_id, refusal=viewers_may_not)
    return definition


class JobSpecSerializer(SpecLimitsMixin, StrictSerializer):
    """What to run and what it needs, for an inline job or a definition, and the team.

    With an instance (a definition being changed) missing fields keep their stored
    values and the team cannot change."""

    viewers_may_not = VIEWERS_MAY_NOT_SUBMIT

    team = serializers.SlugField(required=False, help_text="Team slug; optional with one team.")
    name = serializers.CharField(max_length=200)
    kind = serializers.ChoiceField(choices=JobKind.choices, default=JobKind.COMMAND)
    command = serializers.ListField(
        child=serializers.CharField(max_length=MAX_ARG_LENGTH, trim_whitespace=False),
        min_length=1,
        max_length=MAX_ARGV,
        required=False,
        help_text='argv, e.g. ["sh", "-c", "echo hello"]; for kind "command"',
    )
    callable = serializers.CharField(
        max_length=200, required=False, help_text="Dotted name allowed by JOB_CALLABLES"
    )
    parameters = parameters_field(required=False, default=dict)
    env = env_field(required=False, default=dict)
    resources = ResourcesSerializer(required=False)
    queue = serializers.SlugField(max_length=63, default=DEFAULT_QUEUE_NAME)
    priority = serializers.IntegerField(min_value=-1000, max_value=1000, default=0)
    max_retries = serializers.IntegerField(min_value=0, max_value=20, default=0)
    retry_backoff_seconds = serializers.IntegerField(min_value=0, max_value=86400, default=10)
    timeout_seconds = serializers.IntegerField(
        min_value=1, max_value=7 * 86400, required=False, allow_null=True, default=None
    )
    cpu_time_limit_seconds = serializers.IntegerField(
        min_value=1,
        max_value=365 * 86400,
        required=False,
        allow_null=True,
        default=None,
        help_text="CPU seconds each of its processes may use (RLIMIT_CPU); null: no limit.",
    )
    node_selector = serializers.DictField(
        child=serializers.CharField(max_length=63), required=False, default=dict
    )
    concurrency_key = concurrency_key_field(required=False, default="")
    tasks = serializers.IntegerField(
        min_value=1,
        max_value=GANG_TASKS_MAX,
        default=1,
        help_text="A gang: this many tasks (each with `resources`), placed and run together.",
    )
    preemptible = serializers.BooleanField(
        required=False,
        allow_null=True,
        default=None,
        help_text="May higher-priority work preempt it (stop it, SIGTERM then SIGKILL after "
        "its queue's grace, and run it again later, no retry used)? Null: its queue's "
        "default.",
    )

    def validate_team(self, slug):
        return team_of_write(self, slug)

    def _validate_target(self, attrs):
        """A command job has a command and no callable; a callable job the reverse. When
        a change switches the kind, the other one is cleared."""
        stored = self.instance
        kind = attrs.get("kind", stored.kind if stored is not None else JobKind.COMMAND)
        kept = stored is not None and stored.kind == kind
        if kind == JobKind.COMMAND:
            if "callable" in attrs:
                raise serializers.ValidationError({"callable": ['Only for kind "callable".']})
            if not (attrs.get("command") or (kept and "command" not in attrs)):
                raise serializers.ValidationError({"command": ["This field is required."]})
            if stored is not None:
                attrs["callable"] = ""
        else:
            if "command" in attrs:
                raise serializers.ValidationError({"command": ['Only for kind "command".']})
            if not (attrs.get("callable") or (kept and "callable" not in attrs)):
                raise serializers.ValidationError({"callable": ["This field is required."]})
            if stored is not None:
                attrs["command"] = []

    def _validate_resources(self, attrs):
        if "resources" not in attrs and self.partial:
            return
        given = attrs.pop("resources", None) or {}
        if self.instance is not None and self.partial:
            resources = {
                "cpu": Decimal(self.instance.cpu_millis) / 1000,
                "memory_mb": self.instance.memory_mb,
                "gpu": self.instance.gpu,
            }
        else:
            resources = ResourcesSerializer().to_internal_value({})
        resources.update(given)
        attrs["cpu_millis"] = int(resources["cpu"] * 1000)
        attrs["memory_mb"] = resources["memory_mb"]
        attrs["gpu"] = resources["gpu"]

    def _default_team(self, attrs):
        user = self.context["request"].user
        teams = list(team_list_submittable(user=user)[:2])
        if not teams and team_list_visible(user=user).exists():
            raise PermissionDenied(self.viewers_may_not)
        if not teams:
            raise serializers.ValidationError(
                {"team": ["You are not in any team that may submit jobs."]}
            )
        if len(teams) > 1:
            raise serializers.ValidationError(
                {"team": ["You may submit for several teams; say which one."]}
            )
        attrs["team"] = teams[0]

    def validate(self, attrs):
        self._validate_target(attrs)
        if self.instance is not None:
            attrs.pop("team", None)  # validate_team made sure it is the same
        elif "team" not in attrs:
            self._default_team(attrs)
        self._validate_resources(attrs)
        return attrs


class DependencySerializer(StrictSerializer):
    job = serializers.IntegerField(min_value=1, help_text="Id of a job of the same team.")
    on = serializers.ChoiceField(
        choices=DependencyCondition.choices, default=DependencyCondition.SUCCEEDED
    )


class ArraySerializer(StrictSerializer):
    count = serializers.IntegerField(
        min_value=1, max_value=MAX_ARRAY_COUNT, help_text="Tasks, with JOB_ARRAY_INDEX 0..count-1"
    )
    parallelism = serializers.IntegerField(
        min_value=1,
        max_value=MAX_ARRAY_COUNT,
        required=False,
        help_text="Most tasks running at once; default all of them.",
    )

    def validate(self, attrs):
        attrs.setdefault("parallelism", attrs["count"])
        return attrs


class JobSubmitSerializer(JobSpecSerializer):
    idempotency_key = serializers.CharField(max_length=200, required=False, default="")
    not_before = serializers.DateTimeField(required=False, allow_null=True, default=None)
    depends_on = DependencySerializer(
        many=True,
        required=False,
        help_text='Jobs to wait for, e.g. [{"job": 12, "on": "succeeded"}]',
    )
    on_unsatisfied = serializers.ChoiceField(
        choices=OnUnsatisfied.choices,
        default=OnUnsatisfied.CANCEL,
        help_text="When a dependency can never be met: cancel the job, or leave it waiting.",
    )
    array = ArraySerializer(required=False, help_text="Run as an array of `count` tasks.")
    deadline = serializers.DateTimeField(
        required=False,
        allow_null=True,
        default=None,
        help_text="Cancelled (stopped, if running) when not ended by then.",
    )
    hold = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Submit it held: it is not placed until released (POST .../release/).",
    )


class DefinitionOverridesSerializer(SpecLimitsMixin, StrictSerializer):
    """What a job made from a definition may change: env and parameters are merged over
    the definition's, the others replace its values."""

    name = serializers.CharField(max_length=200, required=False)
    parameters = parameters_field(required=False)
    env = env_field(required=False)
    priority = serializers.IntegerField(min_value=-1000, max_value=1000, required=False)
    idempotency_key = serializers.CharField(max_length=200, required=False)
    not_before = serializers.DateTimeField(required=False, allow_null=True)
    deadline = serializers.DateTimeField(required=False, allow_null=True)
    array = ArraySerializer(required=False, help_text="Run as an array of `count` tasks.")


class JobFromDefinitionSerializer(DefinitionOverridesSerializer):
    """POST /api/jobs/ with `definition`: the spec comes from the definition."""

    definition = serializers.IntegerField(help_text="Id of a job definition of your team.")

    def validate_definition(self, pk):
        user = self.context["request"].user
        return definition_for_submission(user=user, pk=pk, viewers_may_not=VIEWERS_MAY_NOT_SUBMIT)


class JobChangeSerializer(SpecLimitsMixin, StrictSerializer):
    """PATCH /api/jobs/{id}/: what may change while a job is pending. Made with
    `partial=True`: `resources` may name some of its amounts, the others keep theirs."""

    priority = serializers.IntegerField(min_value=-1000, max_value=1000)
    resources = ResourcesSerializer()
    queue = serializers.SlugField(max_length=63)
    node_selector = serializers.DictField(child=serializers.CharField(max_length=63))
    timeout_seconds = serializers.IntegerField(
        min_value=1, max_value=7 * 86400, allow_null=True, help_text="null: its queue's default"
    )
    cpu_time_limit_seconds = serializers.IntegerField(
        min_value=1, max_value=365 * 86400, allow_null=True, help_text="null: no limit"
    )
    max_retries = serializers.IntegerField(min_value=0, max_value=20)
    retry_backoff_seconds = serializers.IntegerField(min_value=0, max_value=86400)

    def validate_resources(self, value):
        if not value:
            raise serializers.ValidationError("Give at least one of cpu, memory_mb and gpu.")
        return value

    def validate(self, attrs):
        if not attrs:
            names = ", ".join(self.fields)
            raise serializers.ValidationError(f"Nothing to change: give one of {names}.")
        resources = attrs.pop("resources", {})
        if "cpu" in resources:
            attrs["cpu_millis"] = int(resources["cpu"] * 1000)
        attrs.update((name, resources[name]) for name in ("memory_mb", "gpu") if name in resources)
        return attrs
