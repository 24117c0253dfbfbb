"""The definitions page: each definition's spec, and a link to submit a job from it."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from ..selectors import definition_list_visible
from .common import PAGE_SIZE, submittable_team_ids


@login_required
def definition_list(request):
    definitions = definition_list_visible(user=request.user).order_by("team__slug", "name")
    return render(
        request,
        "jobs/definition_list.html",
        {
            "definitions": definitions[: PAGE_SIZE * 10],
            "submittable": submittable_team_ids(request.user),
        },
    )
