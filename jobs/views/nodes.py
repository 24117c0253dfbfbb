"""The nodes page: each node's state, capacity, what is allocated and used, and the
attempts running there (those of the user's teams by name); cordon, drain and uncordon
for staff."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from rest_framework import exceptions as api_exceptions

from nodes.models import Node
from nodes.selectors import node_list
from nodes.services import node_cordon, node_drain, node_uncordon

from ..log_reading import LIVE_EXECUTION_STATUSES
from ..models import JobExecution
from ..selectors import job_list_visible
from .common import field_errors

NODE_ACTIONS = {"cordon": node_cordon, "drain": node_drain, "uncordon": node_uncordon}


@login_required
def node_page_list(request):
    running: dict[int, list] = {}
    visible = job_list_visible(user=request.user).values("pk")
    executions = (
        JobExecution.objects.filter(status__in=LIVE_EXECUTION_STATUSES, job__in=visible)
        .select_related("job")
        .order_by("node_id", "reserved_at")
    )
    for execution in executions:
        running.setdefault(execution.node_id, []).append(execution)
    nodes = [(node, running.get(node.pk, [])) for node in node_list()]
    return render(request, "nodes/node_list.html", {"nodes": nodes})


@login_required
@require_POST
def node_action(request, name, action):
    if not request.user.is_staff:
        raise PermissionDenied("Only staff may cordon, drain or uncordon nodes.")
    change = NODE_ACTIONS.get(action)
    if change is None or not Node.objects.filter(name=name).exists():
        raise Http404("No such node or action.")
    try:
        change(name=name)
        messages.success(request, f"Node {name}: {action} done.")
    except (api_exceptions.ValidationError, DjangoValidationError) as exc:
        messages.error(request, " ".join(m for msgs in field_errors(exc).values() for m in msgs))
    return redirect(reverse("node-list-page"))
