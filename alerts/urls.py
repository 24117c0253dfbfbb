from rest_framework.routers import DefaultRouter

from .api import AlertRuleViewSet

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("alerts", AlertRuleViewSet, basename="alert")

urlpatterns = router.urls
