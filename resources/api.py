"""`/api/queues/` and `/api/resources/usage/`. (`/api/allocations/` is the jobs' API:
releasing an allocation ends its attempt.)"""

from decimal import Decimal

from drf_spectacular.utils import (
    OpenApiExample,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Team
from common.schema import refused
from common.serializers import (
    ResourceAmountsSerializer,
    ResourceLimitsSerializer,
    StrictSerializer,
)
from common.viewsets import NameLookupMixin

from .models import PlacementStrategy, Queue
from .selectors import queue_list_visible, usage_summary
from .services import queue_create, queue_delete, queue_update


def _cpu(millis: int | None) -> float | None:
    return None if millis is None else millis / 1000


# --- Queues ----------------------------------------------------------------------------


class QuotaSerializer(StrictSerializer):
    """The most a queue's jobs may hold at once; null (or left out) is no limit."""

    cpu = serializers.DecimalField(
        max_digits=9, decimal_places=3, min_value=Decimal(0), allow_null=True, default=None
    )
    memory_mb = serializers.IntegerField(
        min_value=0, max_value=2**31 - 1, allow_null=True, default=None
    )
    gpu = serializers.IntegerField(min_value=0, max_value=2**31 - 1, allow_null=True, default=None)


class QueueInputSerializer(StrictSerializer):
    name = serializers.SlugField(max_length=63)
    all_teams = serializers.BooleanField(default=False)
    teams = serializers.ListField(child=serializers.SlugField(), max_length=1000, default=list)
    weight = serializers.IntegerField(min_value=1, max_value=1000, default=1)
    priority = serializers.IntegerField(min_value=-1000, max_value=1000, default=0)
    strategy = serializers.ChoiceField(
        choices=PlacementStrategy.choices, default=PlacementStrategy.BINPACK
    )
    quota = QuotaSerializer(required=False)
    default_timeout_seconds = serializers.IntegerField(
        min_value=1,
        max_value=2**31 - 1,
        allow_null=True,
        required=False,
        help_text="Time limit of the queue's jobs that set no timeout_seconds, given them "
        "at submission; reservations for large jobs are computed from time limits.",
    )
    preemptible_default = serializers.BooleanField(
        required=False,
        help_text="Whether its jobs may be preempted by higher-priority work, for jobs that "
        "do not say (set at submission).",
    )
    preemption_grace_seconds = serializers.IntegerField(
        min_value=0,
        max_value=86400,
        allow_null=True,
        required=False,
        help_text="Seconds between SIGTERM and SIGKILL when one of its jobs is preempted; "
        "null is the PREEMPTION_GRACE_SECONDS setting.",
    )

    def validate_teams(self, slugs):
        teams = list(Team.objects.filter(slug__in=slugs))
        missing = sorted(set(slugs) - {team.slug for team in teams})
        if missing:
            raise serializers.ValidationError(f"No team with the slug {', '.join(missing)}.")
        return teams

    def validate(self, attrs):
        # A quota given replaces the whole quota: a resource left out has no limit.
        quota = attrs.pop("quota", None)
        if quota is not None:
            cpu = quota.get("cpu")
            attrs["quota_cpu_millis"] = None if cpu is None else int(cpu * 1000)
            attrs["quota_memory_mb"] = quota.get("memory_mb")
            attrs["quota_gpu"] = quota.get("gpu")
        return attrs


class QueueSerializer(serializers.Serializer):
    name = serializers.CharField()
    all_teams = serializers.BooleanField()
    teams = serializers.SerializerMethodField()
    weight = serializers.IntegerField()
    priority = serializers.IntegerField()
    strategy = serializers.CharField()
    quota = serializers.SerializerMethodField()
    default_timeout_seconds = serializers.IntegerField(allow_null=True)
    preemptible_default = serializers.BooleanField()
    preemption_grace_seconds = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_teams(self, queue) -> list[str]:
        """Staff see every team listed; members only their own teams among them."""
        user = self.context["request"].user
        mine = self.context["my_team_ids"]
        return sorted(t.slug for t in queue.teams.all() if user.is_staff or t.id in mine)

    @extend_schema_field(ResourceLimitsSerializer)
    def get_quota(self, queue) -> dict:
        return {
            "cpu": _cpu(queue.quota_cpu_millis),
            "memory_mb": queue.quota_memory_mb,
            "gpu": queue.quota_gpu,
        }


QUEUE_EXAMPLES = [
    OpenApiExample(
        "A GPU queue for two teams",
        value={
            "name": "gpu",
            "teams": ["blue", "red"],
            "weight": 2,
            "priority": 10,
            "strategy": "spread",
            "quota": {"cpu": 16, "memory_mb": 65536, "gpu": 4},
        },
        request_only=True,
    )
]


@extend_schema_view(
    create=extend_schema(
        request=QueueInputSerializer,
        responses={201: QueueSerializer},
        examples=QUEUE_EXAMPLES,
    ),
    update=extend_schema(request=QueueInputSerializer, responses=QueueSerializer),
    partial_update=extend_schema(request=QueueInputSerializer, responses=QueueSerializer),
    destroy=extend_schema(
        responses={
            204: None,
            400: refused("The default queue, or one with jobs or definitions."),
        }
    ),
)
class QueueViewSet(
    NameLookupMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Everyone lists the queues their teams may submit into; staff create, change and
    delete them."""

    serializer_class = QueueSerializer
    queryset = Queue.objects.none()  # the schema's model; requests use get_queryset
    lookup_field = "name"

    def get_queryset(self):
        return queue_list_visible(user=self.request.user).prefetch_related("teams")

    def get_permissions(self):
        if self.action in ("list", "retrieve"):
            return [IsAuthenticated()]
        return [IsAdminUser()]

    def get_serializer_context(self):
        user = self.request.user
        mine = set() if user.is_staff else set(user.memberships.values_list("team_id", flat=True))
        return {**super().get_serializer_context(), "my_team_ids": mine}

    def _render(self, queue, code=status.HTTP_200_OK) -> Response:
        queue = self.get_queryset().get(pk=queue.pk)
        return Response(self.get_serializer(queue).data, status=code)

    def create(self, request):
        data = QueueInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return self._render(queue_create(**data.validated_data), status.HTTP_201_CREATED)

    def update(self, request, name=None, partial=False):
        queue = self.get_object()
        data = QueueInputSerializer(data=request.data, partial=partial)
        data.is_valid(raise_exception=True)
        return self._render(queue_update(queue=queue, **data.validated_data))

    def partial_update(self, request, name=None):
        return self.update(request, name=name, partial=True)

    def destroy(self, request, name=None):
        queue_delete(queue=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Usage -----------------------------------------------------------------------------


class UsageFiguresSerializer(serializers.Serializer):
    capacity = ResourceAmountsSerializer()
    allocated = ResourceAmountsSerializer()
    free = ResourceAmountsSerializer()


class ClusterUsageSerializer(UsageFiguresSerializer):
    nodes = serializers.IntegerField(help_text="Nodes registered, offline ones included.")


class NodeUsageSerializer(UsageFiguresSerializer):
    name = serializers.CharField()
    status = serializers.CharField()


class QueueUsageSerializer(UsageFiguresSerializer):
    queue = serializers.CharField()
    weight = serializers.IntegerField()
    priority = serializers.IntegerField()
    dominant_share = serializers.FloatField(
        help_text="The largest share of the cluster it holds in any one resource."
    )
    past_share = serializers.FloatField(
        help_text="What it used over the last days, as a share of the cluster "
        "(FAIR_SHARE_HALF_LIFE_DAYS); fair share adds it to `dominant_share`."
    )


class TeamUsageSerializer(UsageFiguresSerializer):
    team = serializers.CharField()
    fair_share_weight = serializers.IntegerField(
        help_text="Its weight in fair share between the teams of a queue they share."
    )
    past_share = serializers.FloatField(
        help_text="What its jobs used over the last days, as a share of the cluster "
        "(FAIR_SHARE_HALF_LIFE_DAYS); fair share within a queue adds it to what they hold."
    )


class UsageSerializer(serializers.Serializer):
    cluster = ClusterUsageSerializer()
    nodes = NodeUsageSerializer(many=True)
    queues = QueueUsageSerializer(many=True)
    teams = TeamUsageSerializer(many=True)


@extend_schema(responses=UsageSerializer)
class UsageView(APIView):
    """Capacity, allocated and free: the cluster, each node, and your teams and queues."""

    def get(self, request):
        return Response(usage_summary(user=request.user))
