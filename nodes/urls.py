from rest_framework.routers import DefaultRouter

from .api import NodeViewSet

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("nodes", NodeViewSet, basename="node")

urlpatterns = router.urls
