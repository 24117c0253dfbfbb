"""`/api/events/` and `/api/jobs/{id}/events/`: what happened to jobs, nodes, schedules
and alerts, newest first, and one job's timeline, oldest first.

It lives with the jobs' API because its filters name nodes, teams and jobs, which the
events app, below them, does not know."""

import django_filters
from drf_spectacular.utils import extend_schema
from rest_framework import generics, mixins, serializers, viewsets
from rest_framework.response import Response

from accounts.models import Team
from common.filters import IsoDateTimeFilter
from common.pagination import CursorPagination
from events.models import Event, EventType
from events.selectors import event_list_visible
from nodes.models import Node

from ..models import Job
from ..selectors import job_list_visible


class EventSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    at = serializers.DateTimeField()
    type = serializers.ChoiceField(choices=EventType.choices)
    message = serializers.CharField()
    team = serializers.SerializerMethodField()
    job = serializers.IntegerField(source="job_id", allow_null=True)
    attempt = serializers.IntegerField(allow_null=True)
    node = serializers.SerializerMethodField()
    schedule = serializers.IntegerField(source="schedule_id", allow_null=True)
    actor = serializers.CharField(help_text="Who acted, when a person did; empty otherwise.")
    data = serializers.DictField(help_text="The details, by type: node, queue, reason...")

    def get_team(self, event) -> str | None:
        """The team's slug (null for a node's own events)."""
        return self.context["team_slugs"].get(event.team_id)

    def get_node(self, event) -> str | None:
        """The node's name when the event was written (kept in `data`), else its name now."""
        return event.data.get("node") or self.context["node_names"].get(event.node_id)


def events_json(events: list[Event]) -> list[dict]:
    """A page of events, with their teams' slugs (and the names of nodes the events do not
    name themselves) read once per page: the events keep plain ids, so they outlive what
    they name."""
    team_ids = {e.team_id for e in events if e.team_id is not None}
    node_ids = {e.node_id for e in events if e.node_id is not None and not e.data.get("node")}
    context = {
        "team_slugs": dict(Team.objects.filter(pk__in=team_ids).values_list("pk", "slug"))
        if team_ids
        else {},
        "node_names": dict(Node.objects.filter(pk__in=node_ids).values_list("pk", "name"))
        if node_ids
        else {},
    }
    return EventSerializer(events, many=True, context=context).data


class EventFilter(django_filters.FilterSet):
    job = django_filters.NumberFilter(field_name="job_id")
    schedule = django_filters.NumberFilter(field_name="schedule_id")
    # Names become ids in a subquery, so each filter reads its own index in list order.
    node = django_filters.CharFilter(method="filter_node", help_text="A node's name.")
    team = django_filters.CharFilter(method="filter_team", help_text="A team's slug.")
    type = django_filters.ChoiceFilter(choices=EventType.choices)
    since = IsoDateTimeFilter(field_name="at", lookup_expr="gte")
    until = IsoDateTimeFilter(field_name="at", lookup_expr="lt")

    def filter_node(self, queryset, name, value):
        return queryset.filter(node_id=Node.objects.filter(name=value).values("pk")[:1])

    def filter_team(self, queryset, name, value):
        return queryset.filter(team_id=Team.objects.filter(slug=value).values("pk")[:1])


class EventPagination(CursorPagination):
    ordering = ("-at", "-id")


class EventViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Events, newest first, paged by cursor: staff see all; anyone else their teams'
    (a node's own events are for staff). Filters `job`, `node`, `schedule`, `team`,
    `type`, `since`, `until`."""

    serializer_class = EventSerializer
    filterset_class = EventFilter
    pagination_class = EventPagination
    queryset = Event.objects.none()  # the schema's model; requests use get_queryset

    def get_queryset(self):
        return event_list_visible(user=self.request.user)

    def list(self, request):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        return self.get_paginated_response(events_json(page))


class JobEventsView(generics.GenericAPIView):
    """A job's timeline: its events, oldest first."""

    serializer_class = EventSerializer
    pagination_class = None
    queryset = Job.objects.none()  # the schema's model (the path's id is a job's)

    @extend_schema(responses=EventSerializer(many=True))
    def get(self, request, pk):
        job = generics.get_object_or_404(job_list_visible(user=request.user), pk=pk)
        events = list(Event.objects.filter(job_id=job.pk).order_by("at", "id"))
        return Response(events_json(events))
