"""The overview: the cluster's capacity and use per node, the queues with their weight,
quota, use and backlog, jobs finished per minute over the last hour, recent failures."""

from datetime import timedelta

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.utils import timezone

from resources.selectors import usage_summary

from ..metrics.summary import metrics_summary
from ..models import JobStatus
from ..selectors import job_list_visible, jobs_finished_per_minute
from ..templatetags.ui import DASH

RECENT_FAILURES = 10
CHART_MINUTES = 60


@login_required
def overview(request):
    user = request.user
    summary = metrics_summary(user=user)
    usage = {queue["queue"]: queue for queue in usage_summary(user=user)["queues"]}
    queues = [
        {**queue, "usage": usage.get(queue["queue"]), "pending": queue["jobs"]["pending"]}
        for queue in summary["queues"]
    ]
    return render(
        request,
        "jobs/overview.html",
        {
            "cluster": summary["cluster"],
            "nodes": [_node_row(node) for node in summary["nodes"]],
            "queues": queues,
            "chart": _finished_chart(user),
            "failures": job_list_visible(user=user).filter(status=JobStatus.FAILED)[
                :RECENT_FAILURES
            ],
        },
    )


def _node_row(node: dict) -> dict:
    """A node of the summary with its cells as text: a page of a thousand nodes renders
    strings, not numbers through the template's localization."""
    allocated, used, capacity = node["allocated"], node["used"], node["capacity"]

    def resource(kind: str, text) -> dict:
        return {
            "bar": _percent(allocated[kind], capacity[kind]),
            "mark": None if used[kind] is None else _percent(used[kind], capacity[kind]),
            "allocated": text(allocated[kind]),
            "used": DASH if used[kind] is None else text(used[kind]),
            "capacity": text(capacity[kind]),
        }

    return {
        "name": node["name"],
        "status": node["status"],
        "up": node["up"],
        "cpu": resource("cpu", _cores),
        "memory": resource("memory_mb", str),
        "gpu": f"{allocated['gpu']} / {capacity['gpu']}",
    }


def _cores(value: float) -> str:
    """As the `floatformat:"-2"` filter: 2 -> "2", 0.5 -> "0.50"."""
    return f"{value:.0f}" if value == int(value) else f"{value:.2f}"


def _percent(part, whole) -> str:
    return str(0 if not whole else max(0, min(100, round(100 * part / whole))))


def _finished_chart(user) -> dict:
    """The last hour's jobs finished per minute, as bars of an inline SVG."""
    now = timezone.now().replace(second=0, microsecond=0)
    start = now - timedelta(minutes=CHART_MINUTES - 1)
    counts = jobs_finished_per_minute(user=user, since=start)
    minutes = [start + timedelta(minutes=i) for i in range(CHART_MINUTES)]
    values = [counts.get(minute, 0) for minute in minutes]
    top = max(values) or 1
    bars = [
        _bar(i, value, top, minute)
        for i, (minute, value) in enumerate(zip(minutes, values, strict=True))
    ]
    return {"bars": bars, "total": sum(values), "top": max(values)}


def _bar(index: int, value: int, top: int, minute) -> dict:
    height = round(80 * value / top)
    return {"x": index * 10, "y": 85 - height, "height": height, "value": value, "minute": minute}
