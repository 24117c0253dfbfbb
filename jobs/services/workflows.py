"""Workflows: a DAG of steps, each one job, checked as a whole and created in one
transaction with all its jobs; cancelled and retried as a whole.

A step's job waits held (waiting_dependencies) on its upstream steps' jobs through
JobDependency rows, with the step's trigger rule; `jobs.services.dependencies` releases
and cancels them as upstreams end, keeps the workflow's status, and holds ready steps
back while `max_parallel` steps are active.
"""

import json
import logging
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import RestrictedError
from django.utils import timezone

from accounts.models import Team, User

from ..models import (
    TERMINAL_JOB_STATUSES,
    DependencyCondition,
    Job,
    JobDefinition,
    JobDependency,
    JobRetry,
    JobStatus,
    PendingReason,
    TriggerRule,
    Workflow,
    WorkflowStatus,
    WorkflowStep,
    WorkflowTemplate,
)
from .actions import JobStateError, job_cancel
from .definitions import DEFINITION_SPEC_FIELDS, definition_job_spec
from .dependencies import dependents_settle, jobs_rearm, workflows_refresh
from .specs import job_preemptible, job_spec_check, job_spec_limit_errors
from .timeline import jobs_submitted_events

logger = logging.getLogger(__name__)

MAX_STEPS = 5000
PARAMETER = re.compile(r"\{\{\s*params\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# The condition each upstream edge of a step carries: what its rule needs of it.
RULE_CONDITION = {
    TriggerRule.ALL_SUCCEEDED: DependencyCondition.SUCCEEDED,
    TriggerRule.ALL_FINISHED: DependencyCondition.FINISHED,
    TriggerRule.ANY_FAILED: DependencyCondition.FAILED,
    TriggerRule.ALL_FAILED: DependencyCondition.FAILED,
    TriggerRule.NONE_FAILED: DependencyCondition.FINISHED,
}


def _step_error(message: str) -> ValidationError:
    return ValidationError({"steps": [message]})


def workflow_steps_check(steps: Sequence[dict]) -> list[str]:
    """Names unique, upstreams known, no cycle; returns the step names in an order where
    each comes after its upstreams."""
    if not steps:
        raise _step_error("A workflow needs at least one step.")
    if len(steps) > MAX_STEPS:
        raise _step_error(f"At most {MAX_STEPS} steps.")
    names: set[str] = set()
    for step in steps:
        if step["name"] in names:
            raise _step_error(f"Step {step['name']!r}: the name is used twice.")
        names.add(step["name"])
    downstream: dict[str, list[str]] = {name: [] for name in names}
    waiting = {}
    for step in steps:
        upstreams = step.get("depends_on", [])
        if len(set(upstreams)) != len(upstreams):
            raise _step_error(f"Step {step['name']!r}: an upstream step is named twice.")
        for upstream in upstreams:
            if upstream not in names:
                raise _step_error(f"Step {step['name']!r} depends on unknown step {upstream!r}.")
            if upstream == step["name"]:
                raise _step_error(f"Step {step['name']!r} depends on itself.")
            downstream[upstream].append(step["name"])
        waiting[step["name"]] = len(upstreams)
    ready = deque(step["name"] for step in steps if not waiting[step["name"]])
    order = []
    while ready:
        name = ready.popleft()
        order.append(name)
        for after in downstream[name]:
            waiting[after] -= 1
            if not waiting[after]:
                ready.append(after)
    if len(order) < len(steps):
        cycle = sorted(name for name, left in waiting.items() if left)
        raise _step_error(f"Steps {', '.join(repr(n) for n in cycle)} form a cycle.")
    return order


def substitute(text: str, parameters: dict | None, *, step: str) -> str:
    """`{{ params.NAME }}` replaced by the parameter's value, as plain text; left as it is
    without parameters (a template being saved: they come with each submission)."""
    if parameters is None:
        return text

    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in parameters:
            raise ValidationError(
                {"parameters": [f"Step {step!r} uses {{{{ params.{name} }}}}, which is not given."]}
            )
        given = parameters[name]
        return given if isinstance(given, str) else json.dumps(given)

    return PARAMETER.sub(value, text)


def _definition_step_spec(definition: JobDefinition, overrides: dict) -> dict:
    """A definition's spec with a step's overrides over it (env and parameters merged)."""
    spec = definition_job_spec(definition=definition)
    for name, value in overrides.items():
        spec[name] = {**spec[name], **value} if name in ("env", "parameters") else value
    return spec


def _step_spec(step: dict, *, team: Team, definitions: dict[int, JobDefinition]) -> dict:
    """The job spec of a step before parameters: inline, or its definition's with its
    overrides over it."""
    if step.get("definition") is not None:
        definition = definitions.get(step["definition"])
        if definition is None:
            raise ValidationError(
                {
                    "steps": [
                        f"Step {step['name']!r}: no definition {step['definition']} "
                        f"in team {team.slug}."
                    ]
                }
            )
        return _definition_step_spec(definition, step.get("overrides") or {})
    spec = dict(step["job"])
    spec.setdefault("name", step["name"])
    return spec


def _step_substituted(spec: dict, parameters: dict | None, *, step: str) -> dict:
    spec = dict(spec)
    spec["command"] = [substitute(arg, parameters, step=step) for arg in spec.get("command", [])]
    spec["env"] = {k: substitute(v, parameters, step=step) for k, v in spec.get("env", {}).items()}
    return spec


@dataclass
class _Checked:
    """Specs checked once per distinct queue, request and target (the costly part of the
    check, a database read); the caps on free-form parts are checked for every step."""

    team: Team
    queues: dict

    def queue(self, spec: dict, *, step: str):
        errors = job_spec_limit_errors(
            env=spec.get("env"),
            parameters=spec.get("parameters"),
            node_selector=spec.get("node_selector"),
        )
        key = (
            spec.get("queue"),
            spec.get("kind"),
            spec.get("callable"),
            spec["cpu_millis"],
            spec["memory_mb"],
            spec["gpu"],
        )
        try:
            if errors:
                raise ValidationError(errors)
            if key not in self.queues:
                self.queues[key] = job_spec_check(team=self.team, spec=spec)
        except ValidationError as exc:
            raise ValidationError(
                {
                    "steps": [
                        f"Step {step!r}: {field}: {' '.join(messages)}"
                        for field, messages in exc.message_dict.items()
                    ]
                }
            ) from None
        return self.queues[key]


def _reserve_job_ids(count: int) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence('jobs_job', 'id')) FROM generate_series(1, %s)",
            [count],
        )
        return [row[0] for row in cursor.fetchall()]


def _workflow_env(workflow_id: int, step: str, upstream_jobs: list[int]) -> dict:
    return {
        "WORKFLOW_ID": str(workflow_id),
        "WORKFLOW_STEP": step,
        "WORKFLOW_UPSTREAM_JOBS": ",".join(str(i) for i in upstream_jobs),
    }


def workflow_specs(*, team: Team, steps: Sequence[dict], parameters: dict | None) -> dict:
    """Each step's job spec (by step name), the whole checked: names, upstreams, cycles,
    definitions of the team, parameters (unless None), each spec."""
    workflow_steps_check(steps)
    wanted = {s["definition"] for s in steps if s.get("definition") is not None}
    definitions = {
        d.pk: d
        for d in JobDefinition.objects.filter(team=team, pk__in=wanted).select_related("queue")
    }
    checked = _Checked(team=team, queues={})
    specs = {}
    for step in steps:
        spec = _step_substituted(
            _step_spec(step, team=team, definitions=definitions), parameters, step=step["name"]
        )
        spec["queue"] = checked.queue(spec, step=step["name"])
        specs[step["name"]] = spec
    return specs


def workflow_create(
    *,
    team: Team,
    name: str,
    steps: Sequence[dict],
    parameters: dict | None = None,
    max_parallel: int | None = None,
    user: User | None = None,
    template: WorkflowTemplate | None = None,
) -> Workflow:
    """A workflow and all its steps' jobs, in one transaction. Each step holds `name`,
    `depends_on` (step names), `trigger_rule`, and either `job` (an inline spec, queue by
    name) or `definition` (an id) with `overrides`. The whole is checked first: names,
    upstreams, cycles, definitions of the team, parameters, each spec."""
    parameters = parameters or {}
    specs = workflow_specs(team=team, steps=steps, parameters=parameters)
    with transaction.atomic():
        workflow = Workflow.objects.create(
            team=team,
            name=name,
            parameters=parameters,
            max_parallel=max_parallel,
            created_by=user,
            template=template,
        )
        ids = dict(zip(specs, _reserve_job_ids(len(specs)), strict=True))
        jobs, edges, rows = [], [], []
        for step in steps:
            spec, rule = specs[step["name"]], step.get("trigger_rule", TriggerRule.ALL_SUCCEEDED)
            upstream_jobs = [ids[u] for u in step.get("depends_on", [])]
            env = {**spec["env"], **_workflow_env(workflow.pk, step["name"], upstream_jobs)}
            jobs.append(
                Job(
                    id=ids[step["name"]],
                    team=team,
                    submitted_by=user,
                    workflow=workflow,
                    queue=spec["queue"],
                    definition=spec.get("definition"),
                    trigger_rule=rule,
                    pending_reason=PendingReason.WAITING_DEPENDENCIES,
                    **{
                        f: spec[f]
                        for f in DEFINITION_SPEC_FIELDS
                        if f in spec and f not in ("env", "preemptible")
                    },
                    env=env,
                    preemptible=job_preemptible(spec.get("preemptible"), spec["queue"]),
                )
            )
            edges += [
                JobDependency(job_id=ids[step["name"]], upstream_id=u, on=RULE_CONDITION[rule])
                for u in upstream_jobs
            ]
            rows.append(
                WorkflowStep(
                    workflow=workflow,
                    name=step["name"],
                    job_id=ids[step["name"]],
                    definition_id=step.get("definition"),
                    overrides=step.get("overrides") or {},
                    depends_on=list(step.get("depends_on", [])),
                    trigger_rule=rule,
                )
            )
        Job.objects.bulk_create(jobs, batch_size=1000)
        steps_by_job = {ids[step["name"]]: step["name"] for step in steps}
        jobs_submitted_events(
            jobs,
            lambda job: f"submitted as step {steps_by_job[job.id]} of workflow {workflow.pk}",
            actor=user.username if user else "",
        )
        JobDependency.objects.bulk_create(edges, batch_size=5000)
        WorkflowStep.objects.bulk_create(rows, batch_size=1000)
        roots = [ids[s["name"]] for s in steps if not s.get("depends_on")]
        dependents_settle(job_ids=roots)
    logger.info("workflow created workflow=%s team=%s steps=%s", workflow.pk, team.slug, len(steps))
    return workflow


def workflow_cancel(*, workflow: Workflow, user: User | None = None) -> Workflow:
    """Cancel every unfinished step: pending ones at once, placed or running ones as a
    job's cancel does. The workflow ends `cancelled` once none is left running."""
    if workflow.status != WorkflowStatus.RUNNING:
        raise JobStateError(f"The workflow already ended ({workflow.status}).")
    Workflow.objects.filter(pk=workflow.pk).update(status=WorkflowStatus.CANCELLED)
    now = timezone.now()
    with transaction.atomic():
        pending = list(
            Job.objects.select_for_update()
            .filter(workflow=workflow, status=JobStatus.PENDING)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        Job.objects.filter(pk__in=pending).update(
            status=JobStatus.CANCELLED,
            pending_reason=PendingReason.NONE,
            finished_at=now,
            not_before=None,
            cancel_reason=f"workflow cancelled by {user.username if user else 'an operator'}",
        )
        dependents_settle(upstream_ids=pending, now=now)
    for job in Job.objects.filter(
        workflow=workflow, status__in=(JobStatus.RESERVED, JobStatus.RUNNING)
    ).order_by("pk"):
        try:
            job_cancel(job=job, user=user)
        except JobStateError:
            continue  # it ended meanwhile
    workflows_refresh(workflow_ids=[workflow.pk])
    workflow.refresh_from_db()
    logger.info("workflow cancel workflow=%s status=%s", workflow.pk, workflow.status)
    return workflow


def workflow_retry(*, workflow: Workflow, user: User | None = None) -> Workflow:
    """Run the failed and cancelled steps again, and every step downstream of them; the
    others are left as they are. A step made from a definition reads it again."""
    now = timezone.now()
    with transaction.atomic():
        steps = list(
            WorkflowStep.objects.filter(workflow=workflow)
            .select_related("job", "definition__queue")
            .order_by("pk")
        )
        downstream: dict[str, list[str]] = {s.name: [] for s in steps}
        for step in steps:
            for upstream in step.depends_on:
                downstream[upstream].append(step.name)
        by_name = {s.name: s for s in steps}
        failed = [s.name for s in steps if s.job.status in (JobStatus.FAILED, JobStatus.CANCELLED)]
        if not failed:
            raise JobStateError("No step failed or was cancelled; there is nothing to retry.")
        again, todo = set(), deque(failed)
        while todo:
            name = todo.popleft()
            if name in again:
                continue
            again.add(name)
            todo.extend(downstream[name])
        rearm = [by_name[n] for n in again if by_name[n].job.status in TERMINAL_JOB_STATUSES]
        job_ids = sorted(s.job_id for s in rearm)
        list(Job.objects.select_for_update().filter(pk__in=job_ids).order_by("pk").values("pk"))
        _steps_refresh_from_definitions(workflow, [s for s in rearm if s.definition_id], steps)
        who = user.username if user else "an operator"
        JobRetry.objects.bulk_create(
            JobRetry(
                job_id=s.job_id,
                attempt=s.job.attempts + 1,
                reason=f"workflow retried by {who}",
                due_at=now,
                requested_by=user,
            )
            for s in rearm
            if s.job.attempts
        )
        jobs_rearm(job_ids=job_ids)
        Workflow.objects.filter(pk=workflow.pk).update(
            status=WorkflowStatus.RUNNING, finished_at=None
        )
        dependents_settle(job_ids=job_ids, now=now)
    workflow.refresh_from_db()
    logger.info("workflow retry workflow=%s steps=%s", workflow.pk, len(job_ids))
    return workflow


def _steps_refresh_from_definitions(
    workflow: Workflow, steps: list[WorkflowStep], every_step: list[WorkflowStep]
) -> None:
    """Copy each definition's spec again onto its steps' jobs (overrides and parameters
    applied), so a definition fixed since is what runs."""
    ids = {s.name: s.job_id for s in every_step}
    checked = _Checked(team=workflow.team, queues={})
    for step in steps:
        spec = _step_substituted(
            _definition_step_spec(step.definition, step.overrides),
            workflow.parameters,
            step=step.name,
        )
        spec["queue"] = checked.queue(spec, step=step.name)
        spec["env"] = {
            **spec["env"],
            **_workflow_env(workflow.pk, step.name, [ids[u] for u in step.depends_on]),
        }
        job = step.job
        for field in DEFINITION_SPEC_FIELDS:
            setattr(job, field, spec[field])
        job.queue = spec["queue"]
        job.preemptible = job_preemptible(spec["preemptible"], job.queue)
        job.save(update_fields=[*DEFINITION_SPEC_FIELDS, "queue"])


# --- Templates ------------------------------------------------------------------------

TEMPLATE_NAME_TAKEN = {"name": ["The team already has a workflow template with this name."]}


def workflow_template_save(
    *, template: WorkflowTemplate | None = None, team: Team, fields: dict
) -> WorkflowTemplate:
    """Create (no `template`) or change a template; its steps are checked as a workflow's
    would be, but for parameters, which each submission brings."""
    template = template or WorkflowTemplate(team=team)
    for name, value in fields.items():
        setattr(template, name, value)
    workflow_specs(team=team, steps=template.steps, parameters=None)
    taken = WorkflowTemplate.objects.filter(team=team, name=template.name)
    if taken.exclude(pk=template.pk).exists():
        raise ValidationError(TEMPLATE_NAME_TAKEN)
    try:
        with transaction.atomic():
            template.save()
    except IntegrityError:
        raise ValidationError(TEMPLATE_NAME_TAKEN) from None
    logger.info("workflow template saved template=%s team=%s", template.pk, team.slug)
    return template


def workflow_template_delete(*, template: WorkflowTemplate) -> None:
    """Delete a template no schedule uses; the workflows made from it stay."""
    try:
        with transaction.atomic():
            template.delete()
    except RestrictedError:
        raise ValidationError(
            {"schedules": ["Schedules still use this template; delete them first."]}
        ) from None


def workflow_template_submit(
    *,
    template: WorkflowTemplate,
    parameters: dict | None = None,
    name: str = "",
    user: User | None = None,
) -> Workflow:
    """A workflow from the template, with `parameters` over its default ones."""
    return workflow_create(
        team=template.team,
        name=name or template.name,
        steps=template.steps,
        parameters={**template.parameters, **(parameters or {})},
        max_parallel=template.max_parallel,
        user=user,
        template=template,
    )
