"""Workflow pages: the list (by state and team, newest first) and a workflow's page (its
steps by level of the DAG, each with its job, upstream steps and state, refreshed while
it runs; cancel and retry)."""

from collections import Counter

from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from accounts.selectors import team_list_visible

from ..models import JobStatus, WorkflowStatus, WorkflowStep
from ..selectors import workflow_list_visible, workflows_count_steps
from ..services.workflows import workflow_cancel, workflow_retry
from .common import PAGE_SIZE, act_and_tell, require_may_change, submittable_team_ids

# A workflow may have thousands of steps; the page shows this many (the API has them all).
STEPS_SHOWN = 1000


@login_required
def workflow_list(request):
    """Newest first, PAGE_SIZE a page; `before` (a workflow's id) pages on by keyset."""
    workflows = workflow_list_visible(user=request.user)
    status = request.GET.get("status", "")
    team = request.GET.get("team", "")
    error = ""
    if status in WorkflowStatus.values:
        workflows = workflows.filter(status=status)
    elif status:
        error = f"State: choose one of {', '.join(WorkflowStatus.values)}."
    if team:
        workflows = workflows.filter(team__slug=team)
    before = request.GET.get("before", "")
    if before.isdigit():
        last = workflows.filter(pk=int(before)).values_list("created_at", flat=True).first()
        if last is not None:
            workflows = workflows.filter(
                Q(created_at__lt=last) | Q(created_at=last, pk__lt=int(before))
            )
    page = list(workflows.order_by("-created_at", "-id")[: PAGE_SIZE + 1])
    workflows_count_steps(page[:PAGE_SIZE])
    return render(
        request,
        "jobs/workflow_list.html",
        {
            "workflows": page[:PAGE_SIZE],
            "next_before": page[PAGE_SIZE - 1].pk if len(page) > PAGE_SIZE else None,
            "status": status,
            "team": team,
            "statuses": WorkflowStatus.values,
            "teams": team_list_visible(user=request.user).order_by("slug"),
            "error": error,
        },
        status=400 if error else 200,
    )


def step_levels(steps: list[WorkflowStep]) -> dict[str, int]:
    """Each step's level in the DAG: 0 for a step with no upstream, else one more than
    its deepest upstream step (the steps are acyclic, checked when the workflow was made)."""
    upstream = {step.name: step.depends_on for step in steps}
    levels: dict[str, int] = {}
    for name in upstream:
        stack = [name]
        while stack:
            current = stack[-1]
            waiting = [up for up in upstream[current] if up not in levels]
            if waiting:
                stack.extend(waiting)
                continue
            stack.pop()
            levels[current] = 1 + max((levels[up] for up in upstream[current]), default=-1)
    return levels


@login_required
def workflow_page(request, pk):
    workflow = get_object_or_404(workflow_list_visible(user=request.user), pk=pk)
    steps = list(workflow.steps.select_related("job").order_by("id"))
    levels = step_levels(steps)
    steps.sort(key=lambda step: (levels[step.name], step.id))
    now = timezone.now()
    for step in steps:
        step.level = levels[step.name]
        if step.job.started_at is not None:
            step.ran = ((step.job.finished_at or now) - step.job.started_at).total_seconds()
    states = Counter(step.job.status for step in steps)
    live = request.GET.get("fragment") == "live"
    return render(
        request,
        "jobs/_workflow_live.html" if live else "jobs/workflow_page.html",
        {
            "workflow": workflow,
            "live": workflow.status == WorkflowStatus.RUNNING,
            "steps": steps[:STEPS_SHOWN],
            "step_count": len(steps),
            "states": [(status, states[status]) for status in JobStatus.values if states[status]],
            "may_act": workflow.team_id in submittable_team_ids(request.user),
            "may_cancel": workflow.status == WorkflowStatus.RUNNING,
            "may_retry": any(
                step.job.status in (JobStatus.FAILED, JobStatus.CANCELLED) for step in steps
            ),
        },
    )


def _act(request, pk, change, done: str):
    workflow = get_object_or_404(workflow_list_visible(user=request.user), pk=pk)
    require_may_change(request.user, workflow.team_id)
    act_and_tell(request, lambda: change(workflow=workflow, user=request.user), done)
    return redirect(reverse("workflow-page", args=[workflow.pk]))


@login_required
@require_POST
def workflow_cancel_view(request, pk):
    return _act(request, pk, workflow_cancel, "Cancel asked for every unfinished step.")


@login_required
@require_POST
def workflow_retry_view(request, pk):
    return _act(request, pk, workflow_retry, "The failed and cancelled steps run again.")
