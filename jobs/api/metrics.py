"""`GET /metrics` (Prometheus text, for scrapers) and `GET /api/metrics/summary/` (the
same figures as JSON, for people through their teams). Both read `jobs.metrics`."""

import hashlib
import hmac
import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from drf_spectacular.utils import extend_schema
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from common.serializers import ResourceAmountsSerializer, ResourceUsageSerializer
from nodes.models import NodeStatus

from ..metrics.collector import ClusterCollector
from ..metrics.figures import ENDED_EXECUTION_STATUSES, LIVE_JOB_STATUSES, PENDING_REASON_LABELS
from ..metrics.summary import metrics_summary

# --- /metrics --------------------------------------------------------------------------

# The cluster's figures only: not this web process's own (its memory, its requests), so
# that every worker answers the same.
registry = CollectorRegistry(auto_describe=False)
registry.register(ClusterCollector())

# Headers a proxy adds: a request that carries one came from wherever the proxy's client
# is, even though the proxy itself connects from this host.
PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


def _digest(text: str) -> bytes:
    # Digests are compared rather than the texts, so the time taken does not depend on
    # the token's length either.
    return hashlib.sha256(text.encode("utf-8", "backslashreplace")).digest()


def _bearer_matches(request: HttpRequest, token: str) -> bool:
    scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        _digest(given.strip()), _digest(token)
    )


def _from_loopback(request: HttpRequest) -> bool:
    if any(header in request.META for header in PROXY_HEADERS):
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _refused(status: int, text: str) -> HttpResponse:
    response = HttpResponse(text, status=status, content_type="text/plain; charset=utf-8")
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


@require_GET
@never_cache
def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    """With METRICS_TOKEN set, only for `Authorization: Bearer <METRICS_TOKEN>`; without
    it, only for clients on this host that came through no proxy."""
    token = settings.METRICS_TOKEN
    if token and not _bearer_matches(request, token):
        return _refused(401, "Authorization: Bearer <METRICS_TOKEN> is required.\n")
    if not token and not _from_loopback(request):
        return _refused(403, "Only this host may read the metrics; set METRICS_TOKEN.\n")
    # The format the scraper asks for (text 0.0.4 unless it says otherwise), as
    # prometheus_client's own server answers.
    encoder, content_type = choose_encoder(request.META.get("HTTP_ACCEPT", ""))
    return HttpResponse(encoder(registry), content_type=content_type)


# --- /api/metrics/summary/ -------------------------------------------------------------


def _counts(name: str, keys, help_text: str) -> type[serializers.Serializer]:
    fields = {str(key): serializers.IntegerField() for key in keys}
    return type(name, (serializers.Serializer,), {**fields, "__doc__": help_text})


LiveJobCountsSerializer = _counts("LiveJobCountsSerializer", LIVE_JOB_STATUSES, "Jobs by status.")
PendingReasonCountsSerializer = _counts(
    "PendingReasonCountsSerializer",
    PENDING_REASON_LABELS,
    "Pending jobs by why they wait; waiting_scheduler: no cycle has looked at them yet.",
)
FinishedCountsSerializer = _counts(
    "FinishedCountsSerializer", ENDED_EXECUTION_STATUSES, "Attempts that ended, by outcome."
)


class PercentilesSerializer(serializers.Serializer):
    """Seconds; null when there was nothing to measure."""

    p50 = serializers.FloatField(allow_null=True)
    p95 = serializers.FloatField(allow_null=True)


class LastHourSerializer(serializers.Serializer):
    started = serializers.IntegerField(help_text="Jobs whose first attempt started.")
    wait_seconds = PercentilesSerializer(
        help_text="Of those jobs: submission to the start of their first attempt."
    )
    finished = FinishedCountsSerializer()
    run_seconds = PercentilesSerializer(help_text="Of the attempts that ended: start to end.")
    failure_ratio = serializers.FloatField(
        allow_null=True,
        help_text="Attempts that failed or were lost, out of those that ended other than "
        "cancelled; null when none did.",
    )


class QueueSummarySerializer(serializers.Serializer):
    queue = serializers.CharField()
    jobs = LiveJobCountsSerializer()
    pending_reasons = PendingReasonCountsSerializer()
    oldest_pending_age_seconds = serializers.FloatField(
        allow_null=True,
        help_text="How long the longest-waiting due pending job has waited since it became "
        "due; null when none is.",
    )
    dead_letter = serializers.IntegerField()
    last_hour = LastHourSerializer()


class NodeSummarySerializer(serializers.Serializer):
    name = serializers.CharField()
    status = serializers.ChoiceField(choices=NodeStatus.choices)
    up = serializers.BooleanField(help_text="Not offline, and heard from lately.")
    capacity = ResourceAmountsSerializer()
    allocated = ResourceAmountsSerializer()
    used = ResourceUsageSerializer()


class ClusterSummarySerializer(serializers.Serializer):
    """Totals over the nodes that are not offline."""

    nodes = serializers.IntegerField(help_text="Nodes registered, offline ones included.")
    nodes_up = serializers.IntegerField()
    capacity = ResourceAmountsSerializer()
    allocated = ResourceAmountsSerializer()
    used = ResourceUsageSerializer()


class MetricsSummarySerializer(serializers.Serializer):
    window_seconds = serializers.IntegerField(help_text="What last_hour covers.")
    queues = QueueSummarySerializer(many=True)
    cluster = ClusterSummarySerializer()
    nodes = NodeSummarySerializer(many=True)


@extend_schema(responses=MetricsSummarySerializer)
class MetricsSummaryView(APIView):
    """Per queue you may use, your teams' jobs (every job for staff): counts by status and
    pending reason, the last hour's waits, run times and failure ratio; and every node's
    capacity, allocation and use."""

    def get(self, request):
        return Response(metrics_summary(user=request.user))
