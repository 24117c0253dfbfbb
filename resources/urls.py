from django.urls import path
from rest_framework.routers import DefaultRouter

from .api import QueueViewSet, UsageView

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("queues", QueueViewSet, basename="queue")

urlpatterns = [
    path("resources/usage/", UsageView.as_view(), name="resources-usage"),
    *router.urls,
]
