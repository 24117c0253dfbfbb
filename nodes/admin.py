from django.contrib import admin

from accounts.audit import AuditedModelAdmin

from .models import Node, NodeCredential
from .services import node_credential_revoke


@admin.register(Node)
class NodeAdmin(AuditedModelAdmin):
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


@admin.register(NodeCredential)
class NodeCredentialAdmin(AuditedModelAdmin):
    list_display = ["node_name", "prefix", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["node_name", "prefix"]
    exclude = ["digest"]
    readonly_fields = ["node_name", "prefix", "created_at", "last_used_at"]
    actions = ["revoke"]

    def has_add_permission(self, request):
        # Keys are issued by `manage.py issue_node_token`, which shows the key once.
        return False

    @admin.action(description="Revoke the selected credentials")
    def revoke(self, request, queryset):
        for credential in queryset:
            node_credential_revoke(credential=credential)
