from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts import views as account_views
from jobs import views as job_views
from jobs.api.metrics import prometheus_metrics

from . import health

urlpatterns = [
    path("", job_views.dashboard, name="dashboard"),
    path("jobs/<int:pk>/", job_views.job_detail, name="job-page"),
    path("login/", account_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/", include("accounts.urls")),
    path("api/", include("jobs.urls")),
    path("api/", include("nodes.urls")),
    path("api/", include("resources.urls")),
    path("api/", include("alerts.urls")),
    path(
        "api/",
        include(
            [
                path("schema/", SpectacularAPIView.as_view(), name="schema"),
                path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
            ]
        ),
    ),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", prometheus_metrics, name="metrics"),
]
