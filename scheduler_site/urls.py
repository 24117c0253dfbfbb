from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts import views as account_views
from alerts import views as alert_views
from jobs.api.metrics import prometheus_metrics
from jobs.views import (
    definitions,
    job_change,
    job_list,
    job_page,
    nodes,
    overview,
    schedules,
    submit,
    usage,
    workflows,
)

from . import health

urlpatterns = [
    # The API first, and in it the routes of node agents, which call most often: a path
    # is matched against the patterns in order, and each one it passes costs time.
    path("api/", include("nodes.urls")),
    path("api/", include("jobs.urls")),
    path("api/", include("accounts.urls")),
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
    # The web UI's pages.
    path("", overview.overview, name="dashboard"),
    path("jobs/", job_list.job_list, name="jobs-page"),
    path("jobs/bulk/", job_list.job_bulk_action, name="jobs-bulk-page"),
    path("jobs/new/", submit.job_submit_page, name="job-submit-page"),
    path("jobs/<int:pk>/", job_page.job_page, name="job-page"),
    path("jobs/<int:pk>/cancel/", job_page.job_cancel_view, name="job-cancel-page"),
    path("jobs/<int:pk>/requeue/", job_page.job_requeue_view, name="job-requeue-page"),
    path("jobs/<int:pk>/acknowledge/", job_page.job_acknowledge_view, name="job-acknowledge-page"),
    path("jobs/<int:pk>/hold/", job_page.job_hold_view, name="job-hold-page"),
    path("jobs/<int:pk>/change/", job_change.job_change_page, name="job-change-page"),
    path("jobs/<int:pk>/release/", job_page.job_release_view, name="job-release-page"),
    path("definitions/", definitions.definition_list, name="definition-list-page"),
    path("schedules/", schedules.schedule_list, name="schedule-list-page"),
    path("schedules/new/", schedules.schedule_form, name="schedule-new-page"),
    path("schedules/preview/", schedules.schedule_preview, name="schedule-preview-page"),
    path("schedules/<int:pk>/", schedules.schedule_page, name="schedule-page"),
    path("schedules/<int:pk>/edit/", schedules.schedule_form, name="schedule-edit-page"),
    path("schedules/<int:pk>/pause/", schedules.schedule_pause_view, name="schedule-pause-page"),
    path("schedules/<int:pk>/resume/", schedules.schedule_resume_view, name="schedule-resume-page"),
    path("workflows/", workflows.workflow_list, name="workflow-list-page"),
    path("workflows/<int:pk>/", workflows.workflow_page, name="workflow-page"),
    path("workflows/<int:pk>/cancel/", workflows.workflow_cancel_view, name="workflow-cancel-page"),
    path("workflows/<int:pk>/retry/", workflows.workflow_retry_view, name="workflow-retry-page"),
    path("nodes/", nodes.node_page_list, name="node-list-page"),
    path("usage/", usage.usage_report_page, name="usage-report-page"),
    path("nodes/<str:name>/<str:action>/", nodes.node_action, name="node-action"),
    path("alerts/", alert_views.alert_list, name="alert-list-page"),
    path("audit/", account_views.audit_list, name="audit-list-page"),
    path("login/", account_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", prometheus_metrics, name="metrics"),
]
