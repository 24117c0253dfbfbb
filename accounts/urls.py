from django.urls import path
from rest_framework.routers import DefaultRouter

from . import api

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("auth/tokens", api.TokenViewSet, basename="token")
router.register("audit", api.AuditEventViewSet, basename="audit")

urlpatterns = [
    path("auth/login/", api.LoginView.as_view(), name="auth-login"),
    path("auth/logout/", api.LogoutView.as_view(), name="auth-logout"),
    path("auth/me/", api.MeView.as_view(), name="auth-me"),
    *router.urls,
]
