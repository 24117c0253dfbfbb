"""`/api/nodes/`: the cluster's nodes, their capacity and what is allocated."""

from rest_framework import serializers, viewsets

from .models import Node


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
