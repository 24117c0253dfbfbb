"""Job definitions: a team's named, reusable job specs, and the jobs made from them."""

import logging

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import RestrictedError

from accounts.models import Team, User

from ..models import JobDefinition
from .specs import job_spec_check
from .submission import Submission, job_submit

logger = logging.getLogger(__name__)

# The JobSpec fields a definition hands on to each job made from it (the queue aside,
# which a submission names).
DEFINITION_SPEC_FIELDS = (
    "name",
    "kind",
    "command",
    "callable",
    "env",
    "parameters",
    "cpu_millis",
    "memory_mb",
    "gpu",
    "priority",
    "max_retries",
    "retry_backoff_seconds",
    "timeout_seconds",
    "cpu_time_limit_seconds",
    "node_selector",
    "concurrency_key",
    "tasks",
    "preemptible",
)
DEFINITION_NAME_TAKEN = {"name": ["The team already has a definition with this name."]}
# What a submission from a definition may change; env and parameters merge over the
# definition's.
DEFINITION_OVERRIDE_FIELDS = (
    "name",
    "parameters",
    "env",
    "priority",
    "idempotency_key",
    "not_before",
    "deadline",
    "array",
)


def definition_job_spec(*, definition: JobDefinition) -> dict:
    """The spec of a job made from `definition`, as `job_submit` takes it."""
    spec = {name: getattr(definition, name) for name in DEFINITION_SPEC_FIELDS}
    spec.update(queue=definition.queue.name, definition=definition)
    return spec


def _definition_name_taken(*, team: Team, name: str, exclude_pk: int | None = None) -> bool:
    taken = JobDefinition.objects.filter(team=team, name=name)
    if exclude_pk is not None:
        taken = taken.exclude(pk=exclude_pk)
    return taken.exists()


def _definition_save(definition: JobDefinition) -> None:
    """Save, answering a name taken meanwhile (a racing create) as the same 400."""
    try:
        with transaction.atomic():
            definition.save()
    except IntegrityError:
        if _definition_name_taken(
            team=definition.team, name=definition.name, exclude_pk=definition.pk
        ):
            raise ValidationError(DEFINITION_NAME_TAKEN) from None
        raise


def definition_create(*, team: Team, spec: dict) -> JobDefinition:
    """A new definition for `team`. `spec` holds validated JobSpec fields, with `queue` as
    a queue name (the default queue when absent); it must be able to run as a job."""
    queue = job_spec_check(team=team, spec=spec)
    if _definition_name_taken(team=team, name=spec["name"]):
        raise ValidationError(DEFINITION_NAME_TAKEN)
    definition = JobDefinition(team=team, **{**spec, "queue": queue})
    _definition_save(definition)
    logger.info("definition created definition=%s team=%s", definition.pk, team.slug)
    return definition


def definition_update(*, definition: JobDefinition, fields: dict) -> JobDefinition:
    """Change some of a definition's spec fields (`queue` as a name). The whole spec is
    checked again, as a submission from it would be. Jobs already made from it keep
    their own copy of the spec."""
    with transaction.atomic():
        definition = (
            JobDefinition.objects.select_for_update(of=("self",))
            .select_related("team", "queue")
            .get(pk=definition.pk)
        )
        spec = {**definition_job_spec(definition=definition), **fields}
        spec.pop("definition")
        queue = job_spec_check(team=definition.team, spec=spec)
        if _definition_name_taken(
            team=definition.team, name=spec["name"], exclude_pk=definition.pk
        ):
            raise ValidationError(DEFINITION_NAME_TAKEN)
        for name in DEFINITION_SPEC_FIELDS:
            setattr(definition, name, spec[name])
        definition.queue = queue
        _definition_save(definition)
    logger.info("definition updated definition=%s team=%s", definition.pk, definition.team.slug)
    return definition


def _schedules_in_the_way_error(definition: JobDefinition) -> ValidationError:
    names = list(definition.schedules.order_by("name").values_list("name", flat=True)[:10])
    return ValidationError(
        {
            "schedules": [
                "Schedules still use this definition ("
                + ", ".join(names)
                + "); delete them or point them at another definition first."
            ]
        }
    )


def definition_delete(*, definition: JobDefinition) -> None:
    """Delete a definition no schedule uses. Jobs made from it stay, without it.

    The row lock makes a concurrent schedule of this definition wait (its foreign key
    needs a share lock on the row) and then fail, rather than slip in between the check
    and the delete."""
    with transaction.atomic():
        definition = (
            JobDefinition.objects.select_for_update(of=("self",))
            .select_related("team")
            .get(pk=definition.pk)
        )
        pk = definition.pk
        if definition.schedules.exists():
            raise _schedules_in_the_way_error(definition)
        try:
            with transaction.atomic():
                definition.delete()
        except RestrictedError:
            raise _schedules_in_the_way_error(definition) from None
    logger.info("definition deleted definition=%s team=%s", pk, definition.team.slug)


def definition_submit(
    *, definition: JobDefinition, overrides: dict, user: User | None = None
) -> Submission:
    """Submit a job made from `definition`. `overrides` may hold DEFINITION_OVERRIDE_FIELDS:
    `env` and `parameters` are merged over the definition's, the others replace its
    values. The merged spec is checked like any other submission."""
    unknown = set(overrides) - set(DEFINITION_OVERRIDE_FIELDS)
    if unknown:
        raise ValidationError({name: ["Comes from the definition."] for name in sorted(unknown)})
    spec = definition_job_spec(definition=definition)
    for name, value in overrides.items():
        spec[name] = {**spec[name], **value} if name in ("env", "parameters") else value
    return job_submit(team=definition.team, spec=spec, user=user)
