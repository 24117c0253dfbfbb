"""`/api/nodes/`: the cluster's nodes, their capacity and what is allocated; staff
cordon, drain and uncordon them."""

from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response

from .models import Node
from .services import node_cordon, node_drain, node_uncordon


class NodeSerializer(serializers.ModelSerializer):
    capacity = serializers.SerializerMethodField()
    allocated = serializers.SerializerMethodField()
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
            "queue",
            "last_heartbeat",
            "agent_version",
            "created_at",
        ]

    def get_capacity(self, node) -> dict:
        return {"cpu": node.cpu_millis / 1000, "memory_mb": node.memory_mb, "gpu": node.gpu}

    def get_allocated(self, node) -> dict:
        return {
            "cpu": node.allocated_cpu_millis / 1000,
            "memory_mb": node.allocated_memory_mb,
            "gpu": node.allocated_gpu,
        }


class NodeViewSet(viewsets.ReadOnlyModelViewSet):
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
