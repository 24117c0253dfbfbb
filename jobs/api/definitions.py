"""`/api/definitions/`: job definitions of a team, and submitting jobs made from them."""

import django_filters
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from accounts.audit import audit_describe
from accounts.permissions import ChangeableObjectMixin
from common.schema import refused
from common.serializers import ResourceAmountsSerializer

from ..models import JobDefinition, JobKind
from ..selectors import definition_list_visible
from ..services.definitions import (
    definition_create,
    definition_delete,
    definition_submit,
    definition_update,
)
from .jobs import submission_response
from .representation import JobSerializer
from .specs import DefinitionOverridesSerializer, JobSpecSerializer

VIEWERS_MAY_NOT_CHANGE = "Viewers may look at this team's definitions but not change them."
VIEWERS_MAY_NOT_SUBMIT = "Viewers may look at this team's definitions but not submit them."


class DefinitionWriteSerializer(JobSpecSerializer):
    viewers_may_not = VIEWERS_MAY_NOT_CHANGE


class DefinitionSerializer(serializers.ModelSerializer):
    team = serializers.CharField(source="team.slug")
    resources = serializers.SerializerMethodField()
    queue = serializers.CharField(source="queue.name")
    schedule_count = serializers.IntegerField(help_text="Schedules that use this definition.")

    class Meta:
        model = JobDefinition
        fields = [
            "id",
            "team",
            "name",
            "kind",
            "command",
            "callable",
            "parameters",
            "env",
            "resources",
            "queue",
            "priority",
            "max_retries",
            "retry_backoff_seconds",
            "timeout_seconds",
            "cpu_time_limit_seconds",
            "node_selector",
            "concurrency_key",
            "tasks",
            "preemptible",
            "schedule_count",
            "created_at",
            "updated_at",
        ]

    @extend_schema_field(ResourceAmountsSerializer)
    def get_resources(self, definition) -> dict:
        return {
            "cpu": definition.cpu_millis / 1000,
            "memory_mb": definition.memory_mb,
            "gpu": definition.gpu,
        }


class DefinitionFilter(django_filters.FilterSet):
    team = django_filters.CharFilter(field_name="team__slug")
    name = django_filters.CharFilter()
    kind = django_filters.ChoiceFilter(choices=JobKind.choices)
    queue = django_filters.CharFilter(field_name="queue__name")


DEFINITION_EXAMPLE = OpenApiExample(
    "A nightly report",
    value={
        "name": "nightly-report",
        "command": ["sh", "-c", "echo report"],
        "env": {"LOG_LEVEL": "info"},
        "resources": {"cpu": 0.5, "memory_mb": 256, "gpu": 0},
        "max_retries": 2,
        "timeout_seconds": 600,
    },
    request_only=True,
)
SUBMIT_EXAMPLE = OpenApiExample(
    "With overrides",
    value={"parameters": {"day": "2030-01-01"}, "idempotency_key": "report-2030-01-01"},
    request_only=True,
)
SUBMITTED = {
    201: OpenApiResponse(JobSerializer, description="Accepted."),
    200: OpenApiResponse(
        JobSerializer, description="The job first submitted with this idempotency key."
    ),
}


@extend_schema_view(
    create=extend_schema(
        request=DefinitionWriteSerializer,
        responses={201: DefinitionSerializer},
        examples=[DEFINITION_EXAMPLE],
    ),
    update=extend_schema(request=DefinitionWriteSerializer, responses=DefinitionSerializer),
    partial_update=extend_schema(request=DefinitionWriteSerializer, responses=DefinitionSerializer),
    destroy=extend_schema(responses={204: None, 400: refused("Schedules use this definition.")}),
    submit=extend_schema(
        request=DefinitionOverridesSerializer, responses=SUBMITTED, examples=[SUBMIT_EXAMPLE]
    ),
)
class DefinitionViewSet(
    ChangeableObjectMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    viewers_may_not_change = VIEWERS_MAY_NOT_CHANGE
    serializer_class = DefinitionSerializer
    filterset_class = DefinitionFilter
    queryset = JobDefinition.objects.none()  # the schema's model; requests use get_queryset

    def get_queryset(self):
        return definition_list_visible(user=self.request.user)

    def _detail(self, definition, code=status.HTTP_200_OK):
        definition = self.get_queryset().get(pk=definition.pk)
        return Response(DefinitionSerializer(definition).data, status=code)

    def create(self, request):
        serializer = DefinitionWriteSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        spec = dict(serializer.validated_data)
        definition = definition_create(team=spec.pop("team"), spec=spec)
        audit_describe(request, target=definition)
        return self._detail(definition, status.HTTP_201_CREATED)

    def update(self, request, pk=None, partial=False):
        definition = self.get_changeable_object()
        serializer = DefinitionWriteSerializer(
            definition, data=request.data, partial=partial, context={"request": request}
        )
        serializer.is_valid(raise_exception=True)
        return self._detail(
            definition_update(definition=definition, fields=dict(serializer.validated_data))
        )

    def partial_update(self, request, pk=None):
        return self.update(request, pk, partial=True)

    def destroy(self, request, pk=None):
        definition_delete(definition=self.get_changeable_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=True, methods=["post"])
    def submit(self, request, pk=None):
        """A job made from this definition; `parameters` and `env` are merged over the
        definition's, `name`, `priority`, `idempotency_key` and `not_before` replace."""
        definition = self.get_changeable_object(refusal=VIEWERS_MAY_NOT_SUBMIT)
        serializer = DefinitionOverridesSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        submission = definition_submit(
            definition=definition, overrides=dict(serializer.validated_data), user=request.user
        )
        return submission_response(submission, user=request.user)
