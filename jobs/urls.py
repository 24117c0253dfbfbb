from django.urls import path
from rest_framework.routers import DefaultRouter

from .api.allocations import AllocationViewSet
from .api.definitions import DefinitionViewSet
from .api.events import EventViewSet, JobEventsView
from .api.jobs import JobViewSet
from .api.metrics import MetricsSummaryView
from .api.schedules import ScheduleViewSet

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("jobs", JobViewSet, basename="job")
router.register("definitions", DefinitionViewSet, basename="definition")
router.register("schedules", ScheduleViewSet, basename="schedule")
router.register("allocations", AllocationViewSet, basename="allocation")
router.register("events", EventViewSet, basename="event")

urlpatterns = [
    *router.urls,
    path("metrics/summary/", MetricsSummaryView.as_view(), name="metrics-summary"),
    path("jobs/<int:pk>/events/", JobEventsView.as_view(), name="job-events"),
]
