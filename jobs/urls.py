from django.urls import path
from rest_framework.routers import DefaultRouter

from .api import agent
from .api.allocations import AllocationViewSet
from .api.concurrency_limits import ConcurrencyLimitViewSet
from .api.definitions import DefinitionViewSet
from .api.events import EventViewSet, JobEventsView
from .api.jobs import JobViewSet
from .api.logs import LogSearchView
from .api.metrics import MetricsSummaryView
from .api.schedules import ScheduleViewSet
from .api.usage import UsageReportView
from .api.workflows import WorkflowTemplateViewSet, WorkflowViewSet

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("jobs", JobViewSet, basename="job")
router.register("definitions", DefinitionViewSet, basename="definition")
router.register("schedules", ScheduleViewSet, basename="schedule")
router.register("allocations", AllocationViewSet, basename="allocation")
router.register("workflows", WorkflowViewSet, basename="workflow")
router.register("workflow-templates", WorkflowTemplateViewSet, basename="workflow-template")
router.register("concurrency-limits", ConcurrencyLimitViewSet, basename="concurrency-limit")
router.register("events", EventViewSet, basename="event")

urlpatterns = [
    # The node agents' calls first: they are the most frequent.
    path("agent/claim/", agent.ClaimView.as_view(), name="agent-claim"),
    path("agent/finish/", agent.FinishView.as_view(), name="agent-finish"),
    path("agent/successes/", agent.SuccessesView.as_view(), name="agent-successes"),
    path("agent/cancel-requests/", agent.CancelRequestsView.as_view(), name="agent-cancel"),
    path("agent/log-chunks/", agent.LogChunksView.as_view(), name="agent-log-chunks"),
    *router.urls,
    path("metrics/summary/", MetricsSummaryView.as_view(), name="metrics-summary"),
    path("logs/", LogSearchView.as_view(), name="log-search"),
    path("usage/report/", UsageReportView.as_view(), name="usage-report"),
    path("jobs/<int:pk>/events/", JobEventsView.as_view(), name="job-events"),
]
