from django.contrib import admin

from accounts.audit import AuditedModelAdmin

from .models import Job, JobDefinition, JobExecution

SPEC_FIELDS = [
    "name",
    "kind",
    "command",
    "env",
    "parameters",
    "cpu_millis",
    "memory_mb",
    "gpu",
    "queue",
    "priority",
    "max_retries",
    "retry_backoff_seconds",
    "timeout_seconds",
    "node_selector",
]


@admin.register(JobDefinition)
class JobDefinitionAdmin(AuditedModelAdmin):
    list_display = ["name", "team", "kind", "cpu_millis", "memory_mb", "gpu", "queue", "updated_at"]
    list_filter = ["team", "kind", "queue"]
    search_fields = ["name"]
    fields = ["team", *SPEC_FIELDS]


class JobExecutionInline(admin.TabularInline):
    model = JobExecution
    extra = 0
    can_delete = False
    fields = ["attempt", "node", "status", "exit_code", "error", "started_at", "finished_at"]
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Job)
class JobAdmin(AuditedModelAdmin):
    list_display = [
        "id",
        "name",
        "team",
        "status",
        "waiting_because",
        "node",
        "attempts",
        "created_at",
        "finished_at",
    ]
    list_filter = ["status", "pending_reason", "team", "queue"]
    search_fields = ["name", "idempotency_key"]
    list_select_related = ["team", "last_execution__node"]
    date_hierarchy = "created_at"
    inlines = [JobExecutionInline]
    # Jobs change state only through the scheduler and node agents.
    readonly_fields = [
        "team",
        "definition",
        "submitted_by",
        "status",
        "pending_reason",
        "idempotency_key",
        "not_before",
        "attempts",
        "last_execution",
        "created_at",
        "started_at",
        "finished_at",
        *SPEC_FIELDS,
    ]

    @admin.display(description="waiting because", ordering="pending_reason")
    def waiting_because(self, job):
        return job.waiting_because

    @admin.display(description="node")
    def node(self, job):
        return job.last_execution.node if job.last_execution else None

    def has_add_permission(self, request):
        return False


@admin.register(JobExecution)
class JobExecutionAdmin(AuditedModelAdmin):
    list_display = ["token", "node", "status", "exit_code", "error", "started_at", "finished_at"]
    list_filter = ["status", "node"]
    search_fields = ["token"]
    list_select_related = ["node"]
    readonly_fields = [f.name for f in JobExecution._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
