"""`/api/concurrency-limits/`: a team's limits on how many of its jobs with one
`concurrency_key` run at once. Members and admins change them; viewers read them."""

import django_filters
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.response import Response

from accounts.audit import audit_describe
from accounts.permissions import ChangeableObjectMixin
from common.serializers import StrictSerializer

from ..models import ConcurrencyLimit
from ..selectors import concurrency_limit_list_visible
from ..services.concurrency_limits import (
    concurrency_limit_create,
    concurrency_limit_delete,
    concurrency_limit_update,
)
from .specs import concurrency_key_field, team_of_write

VIEWERS_MAY_NOT_CHANGE = "Viewers may look at this team's concurrency limits but not change them."
MOST_RUNNING = 100_000


class ConcurrencyLimitSerializer(serializers.ModelSerializer):
    team = serializers.CharField(source="team.slug")

    class Meta:
        model = ConcurrencyLimit
        fields = ["id", "team", "key", "max_running", "created_at", "updated_at"]


class ConcurrencyLimitWriteSerializer(StrictSerializer):
    viewers_may_not = VIEWERS_MAY_NOT_CHANGE

    team = serializers.SlugField(help_text="Team slug; it cannot change.")
    key = concurrency_key_field()
    max_running = serializers.IntegerField(
        min_value=0, max_value=MOST_RUNNING, help_text="0 holds every job with the key."
    )

    def validate_key(self, value):
        if not value:
            raise serializers.ValidationError("This field may not be blank.")
        return value

    def validate_team(self, slug):
        return team_of_write(self, slug)


class ConcurrencyLimitFilter(django_filters.FilterSet):
    team = django_filters.CharFilter(field_name="team__slug")
    key = django_filters.CharFilter()


LIMIT_EXAMPLE = OpenApiExample(
    "Two database jobs at once",
    value={"team": "blue", "key": "db", "max_running": 2},
    request_only=True,
)


@extend_schema_view(
    create=extend_schema(
        request=ConcurrencyLimitWriteSerializer,
        responses={201: ConcurrencyLimitSerializer},
        examples=[LIMIT_EXAMPLE],
    ),
    update=extend_schema(
        request=ConcurrencyLimitWriteSerializer, responses=ConcurrencyLimitSerializer
    ),
    partial_update=extend_schema(
        request=ConcurrencyLimitWriteSerializer, responses=ConcurrencyLimitSerializer
    ),
    destroy=extend_schema(responses={204: None}),
)
class ConcurrencyLimitViewSet(
    ChangeableObjectMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    viewers_may_not_change = VIEWERS_MAY_NOT_CHANGE
    serializer_class = ConcurrencyLimitSerializer
    filterset_class = ConcurrencyLimitFilter
    queryset = ConcurrencyLimit.objects.none()  # the schema's model; requests use get_queryset

    def get_queryset(self):
        return concurrency_limit_list_visible(user=self.request.user)

    def create(self, request):
        serializer = ConcurrencyLimitWriteSerializer(
            data=request.data, context={"request": request}
        )
        serializer.is_valid(raise_exception=True)
        limit = concurrency_limit_create(**serializer.validated_data)
        audit_describe(request, target=limit)
        return Response(ConcurrencyLimitSerializer(limit).data, status=status.HTTP_201_CREATED)

    def update(self, request, pk=None, partial=False):
        limit = self.get_changeable_object()
        serializer = ConcurrencyLimitWriteSerializer(
            limit, data=request.data, partial=partial, context={"request": request}
        )
        serializer.is_valid(raise_exception=True)
        fields = dict(serializer.validated_data)
        fields.pop("team", None)  # validate_team made sure it is the same
        limit = concurrency_limit_update(limit=limit, fields=fields)
        return Response(ConcurrencyLimitSerializer(limit).data)

    def partial_update(self, request, pk=None):
        return self.update(request, pk, partial=True)

    def destroy(self, request, pk=None):
        concurrency_limit_delete(limit=self.get_changeable_object())
        return Response(status=status.HTTP_204_NO_CONTENT)
