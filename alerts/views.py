"""The alerts page: the rules the user may see, with their open incidents and latest
deliveries. Rules are made and changed through `/api/alerts/`."""

from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch
from django.shortcuts import render

from .models import AlertDelivery, AlertIncident
from .selectors import alert_rule_list_visible

RECENT = 5


@login_required
def alert_list(request):
    rules = (
        alert_rule_list_visible(user=request.user)
        .select_related("team")
        .prefetch_related(
            Prefetch(
                "incidents",
                queryset=AlertIncident.objects.filter(resolved_at__isnull=True),
                to_attr="open_incidents",
            ),
        )
        .order_by("name", "id")
    )
    recent = AlertDelivery.objects.filter(rule__in=rules).order_by("-id")[:20]
    return render(
        request,
        "alerts/alert_list.html",
        {"rules": rules, "deliveries": recent.select_related("rule", "channel")},
    )
