"""`/api/nodes/`: the cluster's nodes, their capacity and what is allocated; staff
cordon, drain and uncordon them; node agents register and heartbeat with their own
credential."""

from decimal import Decimal

from django.utils import timezone
from drf_spectacular.utils import (
    OpenApiExample,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response

from accounts.audit import audit_describe
from common.serializers import (
    ResourceAmountsSerializer,
    ResourceUsageSerializer,
    StrictSerializer,
)
from common.viewsets import NameLookupMixin

from .authentication import IsNodeAgent, NodeCredentialAuthentication
from .models import NODE_NAME_RE, Node
from .services import (
    NodeUsage,
    node_cordon,
    node_drain,
    node_heartbeat,
    node_register,
    node_uncordon,
)

MAX_LABELS = 32
MAX_RUNNING_TOKENS = 10_000
# Names that would collide with the routes under /api/nodes/.
RESERVED_NODE_NAMES = frozenset({"register"})


_DATETIME = serializers.DateTimeField()


class NodeSerializer(serializers.ModelSerializer):
    capacity = serializers.SerializerMethodField()
    allocated = serializers.SerializerMethodField()
    used = serializers.SerializerMethodField()
    queue = serializers.CharField(source="queue_name")

    class Meta:
        model = Node
        fields = [
            "name",
            "address",
            "status",
            "labels",
            "capacity",
            "allocated",
            "used",
            "queue",
            "last_heartbeat",
            "agent_version",
            "created_at",
        ]

    def to_representation(self, node) -> dict:
        """The fields above, written out: DRF builds a ModelSerializer's fields anew for
        each instance, which cost a heartbeat's answer more than its update."""
        return {
            "name": node.name,
            "address": node.address,
            "status": node.status,
            "labels": node.labels,
            "capacity": self.get_capacity(node),
            "allocated": self.get_allocated(node),
            "used": self.get_used(node),
            "queue": node.queue_name,
            "last_heartbeat": _DATETIME.to_representation(node.last_heartbeat),
            "agent_version": node.agent_version,
            "created_at": _DATETIME.to_representation(node.created_at),
        }

    @extend_schema_field(ResourceAmountsSerializer)
    def get_capacity(self, node) -> dict:
        return {"cpu": node.cpu_millis / 1000, "memory_mb": node.memory_mb, "gpu": node.gpu}

    @extend_schema_field(ResourceAmountsSerializer)
    def get_allocated(self, node) -> dict:
        return {
            "cpu": node.allocated_cpu_millis / 1000,
            "memory_mb": node.allocated_memory_mb,
            "gpu": node.allocated_gpu,
        }

    @extend_schema_field(ResourceUsageSerializer)
    def get_used(self, node) -> dict:
        return node_used(node)


def node_used(node: Node) -> dict:
    """What the node's jobs used at its last heartbeat, as the API answers it."""
    cpu = node.used_cpu_millis
    return {"cpu": None if cpu is None else cpu / 1000, "memory_mb": node.used_memory_mb}


class NodeRegisterSerializer(StrictSerializer):
    name = serializers.RegexField(NODE_NAME_RE, max_length=63, help_text="e.g. node-a")
    cpu = serializers.DecimalField(
        max_digits=9, decimal_places=3, min_value=Decimal("0.001"), help_text="CPU cores"
    )
    memory_mb = serializers.IntegerField(min_value=0, max_value=2**31 - 1)
    gpu = serializers.IntegerField(min_value=0, max_value=1024, default=0)
    labels = serializers.DictField(
        child=serializers.CharField(max_length=63, allow_blank=True), required=False, default=dict
    )
    address = serializers.CharField(max_length=255, required=False, default="", allow_blank=True)
    agent_version = serializers.CharField(
        max_length=32, required=False, default="", allow_blank=True
    )

    def validate_name(self, name):
        if name in RESERVED_NODE_NAMES:
            raise serializers.ValidationError(f"{name!r} is reserved.")
        return name

    def validate_labels(self, labels):
        if len(labels) > MAX_LABELS:
            raise serializers.ValidationError(f"At most {MAX_LABELS} labels.")
        if any(not key or len(key) > 63 or "\x00" in key for key in labels):
            raise serializers.ValidationError("Label keys are 1 to 63 characters.")
        return labels


class NodeUsageInputSerializer(StrictSerializer):
    cpu = serializers.DecimalField(
        max_digits=9,
        decimal_places=3,
        min_value=Decimal(0),
        help_text="CPU time per second the node's jobs used, in cores, e.g. 1.5",
    )
    memory_mb = serializers.IntegerField(
        min_value=0, max_value=2**31 - 1, help_text="Resident memory of the node's jobs"
    )


class NodeHeartbeatSerializer(StrictSerializer):
    running_tokens = serializers.ListField(
        child=serializers.CharField(max_length=100),
        max_length=MAX_RUNNING_TOKENS,
        default=list,
        help_text="The execution tokens the agent is running, e.g. job-12-attempt-1",
    )
    used = NodeUsageInputSerializer(
        required=False, help_text="What the jobs used; left out when the agent does not sample."
    )
    broker_reachable = serializers.BooleanField(
        default=True,
        help_text=(
            "False when the agent cannot reach the broker: the heartbeat does not count as a "
            "sign of life, and the node goes offline as a silent one would."
        ),
    )


def _own_node_name(request, name: str) -> str:
    """`name`, if the caller's credential is this node's; 403 otherwise."""
    if request.auth.node_name != name:
        raise PermissionDenied("This credential belongs to another node.")
    return name


NODE = {200: NodeSerializer}


@extend_schema_view(
    cordon=extend_schema(request=None, responses=NODE),
    drain=extend_schema(request=None, responses=NODE),
    uncordon=extend_schema(request=None, responses=NODE),
    register=extend_schema(
        request=NodeRegisterSerializer,
        responses=NODE,
        examples=[
            OpenApiExample(
                "A node with a GPU",
                value={
                    "name": "node-a",
                    "cpu": 8,
                    "memory_mb": 16384,
                    "gpu": 1,
                    "labels": {"zone": "a"},
                    "address": "10.0.0.5",
                    "agent_version": "1.0",
                },
                request_only=True,
            )
        ],
    ),
    heartbeat=extend_schema(
        request=NodeHeartbeatSerializer,
        responses=NODE,
        examples=[
            OpenApiExample(
                "Running two attempts",
                value={
                    "running_tokens": ["job-12-attempt-1", "job-15-attempt-2"],
                    "used": {"cpu": 1.5, "memory_mb": 900},
                },
                request_only=True,
            )
        ],
    ),
)
class NodeViewSet(NameLookupMixin, viewsets.ReadOnlyModelViewSet):
    queryset = Node.objects.order_by("name")
    serializer_class = NodeSerializer
    lookup_field = "name"
    filterset_fields = ["status"]

    def _transition(self, change) -> Response:
        node = change(name=self.get_object().name)
        return Response(NodeSerializer(node).data)

    @action(detail=True, methods=["post"], permission_classes=[IsAdminUser])
    def cordon(self, request, name=None):
        """No new work; what runs there carries on."""
        return self._transition(node_cordon)

    @action(detail=True, methods=["post"], permission_classes=[IsAdminUser])
    def drain(self, request, name=None):
        """No new work; cordoned once what runs there has finished."""
        return self._transition(node_drain)

    @action(detail=True, methods=["post"], permission_classes=[IsAdminUser])
    def uncordon(self, request, name=None):
        """Ready for new work again."""
        return self._transition(node_uncordon)

    @action(
        detail=False,
        methods=["post"],
        authentication_classes=[NodeCredentialAuthentication],
        permission_classes=[IsNodeAgent],
    )
    def register(self, request):
        """A node agent registers its node (or updates its capacity and labels)."""
        data = NodeRegisterSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        spec = dict(data.validated_data)
        name = _own_node_name(request, spec.pop("name"))
        spec["cpu_millis"] = int(spec.pop("cpu") * 1000)
        node = node_register(name=name, **spec)
        audit_describe(request, target=node)
        return Response(NodeSerializer(node).data, status=status.HTTP_200_OK)

    # Not throttled, as the agents' other calls (`/api/agent/`) are not: a node's
    # heartbeats come at its agent's pace, and only the platform's agents hold node keys.
    @action(
        detail=True,
        methods=["post"],
        authentication_classes=[NodeCredentialAuthentication],
        permission_classes=[IsNodeAgent],
        throttle_classes=[],
    )
    def heartbeat(self, request, name=None):
        """A node agent says it is alive and which executions it is running."""
        _own_node_name(request, name)
        data = NodeHeartbeatSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        used = data.validated_data.get("used")
        node = node_heartbeat(
            name=name,
            at=timezone.now(),
            running_tokens=data.validated_data["running_tokens"],
            used=None
            if used is None
            else NodeUsage(cpu_millis=int(used["cpu"] * 1000), memory_mb=used["memory_mb"]),
            broker_reachable=data.validated_data["broker_reachable"],
        )
        if node is None:
            raise NotFound("This node is not registered; register it first.")
        return Response(NodeSerializer(node).data)
