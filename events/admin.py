from django.contrib import admin

from .models import Event


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    """Events are a record: read, filtered, never edited by hand."""

    list_display = ("at", "type", "message", "team_id", "job_id", "node_id", "schedule_id")
    list_filter = ("type", ("at", admin.DateFieldListFilter))
    search_fields = ("=job_id", "=node_id", "=schedule_id", "=team_id", "actor")
    show_full_result_count = False
    readonly_fields = [f.name for f in Event._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
