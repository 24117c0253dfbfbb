"""The usage report page: what the user's teams' jobs used over a span of days, by team,
queue, user or day, as `GET /api/usage/report/` answers it; also as CSV."""

import csv

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render
from rest_framework import exceptions as api_exceptions

from accounts.selectors import team_list_visible

from ..api.usage import usage_report_answer
from ..usage_report import GROUPS
from .common import field_errors

# The report's figures, with their headings.
COLUMNS = (
    ("attempts", "Attempts"),
    ("succeeded", "Succeeded"),
    ("run_hours", "Run hours"),
    ("cpu_hours", "CPU core-hours"),
    ("memory_gb_hours", "Memory GiB-hours"),
    ("gpu_hours", "GPU hours"),
)


def _shown(values: dict) -> list[str]:
    """The figures as the page writes them: hours to the thousandth, without trailing
    zeros, thousands separated."""
    return [
        str(values[key])
        if isinstance(values[key], int)
        else f"{values[key]:,.3f}".rstrip("0").rstrip(".")
        for key, _ in COLUMNS
    ]


def _query(request) -> dict:
    """The form's fields as the API's query: the checked groups comma-separated (team when
    none is), blank fields left out."""
    query = {key: value for key, value in request.GET.items() if value and key != "by"}
    query["by"] = ",".join(request.GET.getlist("by")) or "team"
    return query


def _csv(answer: dict) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    name = f"usage-{answer['since']}-{answer['until']}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    writer = csv.writer(response)
    writer.writerow([*answer["by"], *(key for key, _ in COLUMNS)])
    for row in answer["rows"]:
        writer.writerow([*(row[group] for group in answer["by"]), *(row[k] for k, _ in COLUMNS)])
    return response


@login_required
def usage_report_page(request):
    query = _query(request)
    answer, errors = None, {}
    try:
        answer = usage_report_answer(user=request.user, query=query)
    except api_exceptions.ValidationError as exc:
        errors = field_errors(exc)
    if answer is not None and request.GET.get("format") == "csv":
        return _csv(answer)
    rows = (
        [([row[group] for group in answer["by"]], _shown(row)) for row in answer["rows"]]
        if answer
        else []
    )
    return render(
        request,
        "jobs/usage_report.html",
        {
            "answer": answer,
            "rows": rows,
            "total": _shown(answer["total"]) if answer else [],
            "errors": errors,
            # The span shown, the defaults once worked out.
            "form": {**query, "since": str(answer["since"]), "until": str(answer["until"])}
            if answer
            else query,
            "by": query["by"].split(","),
            "groups": GROUPS,
            "figures": [label for _, label in COLUMNS],
            "teams": team_list_visible(user=request.user).order_by("slug"),
            "csv_query": request.GET.urlencode(),
        },
    )
