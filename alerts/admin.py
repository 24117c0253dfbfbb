from django.contrib import admin

from .models import AlertChannel, AlertDelivery, AlertIncident, AlertRule


class AlertChannelInline(admin.TabularInline):
    """Shown, never the secret; made through the API, whose answer shows a new secret once."""

    model = AlertChannel
    fields = ("kind", "target", "created_at")
    readonly_fields = fields
    extra = 0

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    list_display = ("name", "team", "condition", "threshold", "enabled", "snoozed_until")
    list_filter = ("condition", "enabled", "team")
    search_fields = ("name", "name_pattern", "queue")
    inlines = [AlertChannelInline]


@admin.register(AlertIncident)
class AlertIncidentAdmin(admin.ModelAdmin):
    list_display = ("rule", "dedupe_key", "summary", "opened_at", "resolved_at")
    list_filter = (("resolved_at", admin.EmptyFieldListFilter), "rule__condition")
    search_fields = ("dedupe_key", "summary", "rule__name")
    readonly_fields = [f.name for f in AlertIncident._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(AlertDelivery)
class AlertDeliveryAdmin(admin.ModelAdmin):
    list_display = ("id", "rule", "kind", "channel", "status", "attempts", "created_at")
    list_filter = ("status", "kind", "channel__kind", ("created_at", admin.DateFieldListFilter))
    search_fields = ("rule__name", "channel__target")
    readonly_fields = [f.name for f in AlertDelivery._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
