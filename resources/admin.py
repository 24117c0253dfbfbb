from django.contrib import admin

from accounts.audit import AuditedModelAdmin

from .models import DEFAULT_QUEUE_NAME, Allocation, Queue


@admin.register(Queue)
class QueueAdmin(AuditedModelAdmin):
    list_display = [
        "name",
        "all_teams",
        "weight",
        "priority",
        "strategy",
        "quota_cpu",
        "quota_memory_mb",
        "quota_gpu",
        "preemptible_default",
        "preemption_grace_seconds",
    ]
    list_filter = ["all_teams", "strategy", "preemptible_default"]
    search_fields = ["name"]
    filter_horizontal = ["teams"]

    @admin.display(description="CPU quota", ordering="quota_cpu_millis")
    def quota_cpu(self, queue):
        return "" if queue.quota_cpu_millis is None else f"{queue.quota_cpu_millis / 1000:g}"

    def has_delete_permission(self, request, obj=None):
        # Jobs submitted without a queue go to the default one.
        if obj is not None and obj.name == DEFAULT_QUEUE_NAME:
            return False
        return super().has_delete_permission(request, obj)


@admin.register(Allocation)
class AllocationAdmin(AuditedModelAdmin):
    list_display = [
        "execution",
        "node",
        "queue",
        "team",
        "cpu_millis",
        "memory_mb",
        "gpu",
        "status",
        "created_at",
        "released_at",
    ]
    list_filter = ["status", "queue", "team", "node"]
    search_fields = ["execution__token", "node__name"]
    list_select_related = ["execution", "node", "queue", "team"]
    readonly_fields = [f.name for f in Allocation._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False
