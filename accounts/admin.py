from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from .audit import AuditedModelAdmin
from .models import ApiToken, AuditEvent, Membership, Team, User


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(User)
class PlatformUserAdmin(AuditedModelAdmin, UserAdmin):
    pass


@admin.register(Team)
class TeamAdmin(AuditedModelAdmin):
    list_display = ["name", "slug", "fair_share_weight", "past_share", "created_at"]
    readonly_fields = ["past_share"]  # the scheduler's leader keeps it
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]


@admin.register(ApiToken)
class ApiTokenAdmin(AuditedModelAdmin):
    list_display = [
        "name",
        "user",
        "prefix",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = ["revoked_at"]
    search_fields = ["name", "user__username", "prefix"]
    # The digest is not a secret anyone can use, but there is no reason to show or edit it.
    exclude = ["digest"]
    readonly_fields = ["prefix", "created_at", "last_used_at"]

    def has_add_permission(self, request):
        # Keys are issued through the API, which shows the secret once.
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read only: the audit log is written by the platform, never edited."""

    list_display = ["at", "actor_name", "action", "outcome", "object_type", "object_repr", "team"]
    list_filter = ["action", "outcome", "team"]
    search_fields = ["actor_name", "action", "object_repr", "object_id"]
    list_select_related = ["team"]
    date_hierarchy = "at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
