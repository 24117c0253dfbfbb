"""`/api/allocations/`: what each attempt holds on its node; staff release a stuck one.

It lives with the jobs' API, not the resources', because releasing ends the attempt,
which is the jobs' service to do (resources never import jobs)."""

import django_filters
from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_view
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response

from common.schema import refused
from common.serializers import ResourceAmountsSerializer
from resources.models import Allocation, AllocationStatus
from resources.selectors import allocation_list_visible

from ..services.actions import execution_release_stuck


class AllocationSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    job = serializers.IntegerField(source="execution.job_id")
    attempt = serializers.IntegerField(source="execution.attempt")
    token = serializers.CharField(source="execution.token")
    execution_status = serializers.CharField(source="execution.status")
    node = serializers.CharField(source="node.name")
    team = serializers.CharField(source="team.slug")
    queue = serializers.CharField(source="queue.name")
    resources = serializers.SerializerMethodField()
    status = serializers.CharField()
    created_at = serializers.DateTimeField()
    activated_at = serializers.DateTimeField(allow_null=True)
    released_at = serializers.DateTimeField(allow_null=True)

    @extend_schema_field(ResourceAmountsSerializer)
    def get_resources(self, allocation) -> dict:
        return {
            "cpu": allocation.cpu_millis / 1000,
            "memory_mb": allocation.memory_mb,
            "gpu": allocation.gpu,
        }


class AllocationFilter(django_filters.FilterSet):
    node = django_filters.CharFilter(field_name="node__name")
    status = django_filters.ChoiceFilter(choices=AllocationStatus.choices)
    team = django_filters.CharFilter(field_name="team__slug")
    queue = django_filters.CharFilter(field_name="queue__name")
    job = django_filters.NumberFilter(field_name="execution__job_id")


@extend_schema_view(
    release=extend_schema(
        request=None,
        responses={200: AllocationSerializer, 400: refused("The allocation is already released.")},
    )
)
class AllocationViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = AllocationSerializer
    filterset_class = AllocationFilter
    queryset = Allocation.objects.none()  # the schema's model; requests use get_queryset

    def get_queryset(self):
        return allocation_list_visible(user=self.request.user)

    @action(detail=True, methods=["post"], permission_classes=[IsAdminUser])
    def release(self, request, pk=None):
        """Release a stuck allocation; its execution ends failed, saying who released it."""
        allocation = self.get_object()
        released = execution_release_stuck(
            execution_id=allocation.execution_id, released_by=request.user.username
        )
        if not released:
            raise serializers.ValidationError(
                {"non_field_errors": [f"Allocation {allocation.pk} is already released."]}
            )
        return Response(self.get_serializer(self.get_queryset().get(pk=allocation.pk)).data)
