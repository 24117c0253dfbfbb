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
            "nodes": summary["nodes"],
            "queues": queues,
            "chart": _finished_chart(user),
            "failures": job_list_visible(user=user).filter(status=JobStatus.FAILED)[
                :RECENT_FAILURES
            ],
        },
    )


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
