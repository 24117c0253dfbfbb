from django.urls import path
from rest_framework.routers import DefaultRouter

from .api import AllocationViewSet, QueueViewSet, UsageView

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("queues", QueueViewSet, basename="queue")
router.register("allocations", AllocationViewSet, basename="allocation")

urlpatterns = [
    path("resources/usage/", UsageView.as_view(), name="resources-usage"),
    *router.urls,
]
