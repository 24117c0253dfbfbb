from rest_framework.routers import DefaultRouter

from .api import JobViewSet
from .definitions_api import DefinitionViewSet
from .schedules_api import ScheduleViewSet

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("jobs", JobViewSet, basename="job")
router.register("definitions", DefinitionViewSet, basename="definition")
router.register("schedules", ScheduleViewSet, basename="schedule")

urlpatterns = router.urls
