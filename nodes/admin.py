from django.contrib import admin

from .models import Node


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "status",
        "cpu",
        "allocated_cpu",
        "memory_mb",
        "allocated_memory_mb",
        "gpu",
        "allocated_gpu",
        "last_heartbeat",
    ]
    list_filter = ["status"]
    search_fields = ["name", "address"]
    # Counters belong to the allocation services; editing them by hand would break accounting.
    readonly_fields = [
        "allocated_cpu_millis",
        "allocated_memory_mb",
        "allocated_gpu",
        "last_heartbeat",
        "agent_version",
        "created_at",
        "updated_at",
    ]

    @admin.display(description="CPU", ordering="cpu_millis")
    def cpu(self, node):
        return f"{node.cpu_millis / 1000:g}"

    @admin.display(description="CPU allocated", ordering="allocated_cpu_millis")
    def allocated_cpu(self, node):
        return f"{node.allocated_cpu_millis / 1000:g}"
