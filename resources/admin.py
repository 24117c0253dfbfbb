from django.contrib import admin

from .models import Allocation


@admin.register(Allocation)
class AllocationAdmin(admin.ModelAdmin):
    list_display = [
        "execution",
        "node",
        "cpu_millis",
        "memory_mb",
        "gpu",
        "status",
        "created_at",
        "released_at",
    ]
    list_filter = ["status", "node"]
    search_fields = ["execution__token", "node__name"]
    list_select_related = ["execution", "node"]
    readonly_fields = [f.name for f in Allocation._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False
