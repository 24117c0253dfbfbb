from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import ValidationError
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from accounts.audit import AuditedModelAdmin

from .models import (
    ConcurrencyLimit,
    Job,
    JobDefinition,
    JobDependency,
    JobExecution,
    JobSchedule,
    JobScheduleRun,
    Workflow,
    WorkflowStep,
    WorkflowTemplate,
)
from .schedule_backfill import schedule_backfill
from .schedule_times import describe
from .schedules import (
    SCHEDULE_FIELDS,
    schedule_create,
    schedule_delete,
    schedule_pause,
    schedule_resume,
    schedule_update,
    schedule_validate,
)
from .services.concurrency_limits import (
    concurrency_limit_create,
    concurrency_limit_delete,
    concurrency_limit_update,
)
from .services.definitions import (
    DEFINITION_SPEC_FIELDS,
    definition_create,
    definition_delete,
    definition_update,
)
from .services.specs import job_spec_check
from .services.workflows import workflow_cancel, workflow_retry, workflow_template_delete

# A definition's spec as a job gets it, and its queue.
SPEC_FIELDS = [*DEFINITION_SPEC_FIELDS, "queue"]


class JobDefinitionForm(forms.ModelForm):
    """Checks a definition as the API does (callable allow-list, the team's queues, the
    largest node, the caps), with each error on its field where the form has one."""

    class Meta:
        model = JobDefinition
        fields = ["team", *SPEC_FIELDS]

    def clean(self):
        cleaned = super().clean()
        team = cleaned.get("team") or getattr(self.instance, "team", None)
        if self.errors or team is None:
            return cleaned
        taken = JobDefinition.objects.filter(team=team, name=cleaned["name"])
        if taken.exclude(pk=self.instance.pk).exists():
            self.add_error("name", "The team already has a definition with this name.")
            return cleaned
        spec = {name: cleaned.get(name) for name in SPEC_FIELDS}
        spec["queue"] = spec["queue"].name
        try:
            job_spec_check(team=team, spec=spec)
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                self.add_error(field if field in self.fields else None, messages)
        return cleaned


@admin.register(JobDefinition)
class JobDefinitionAdmin(AuditedModelAdmin):
    """Saves and deletes go through the definition services, as the API's do."""

    form = JobDefinitionForm
    list_display = ["name", "team", "kind", "cpu_millis", "memory_mb", "gpu", "queue", "updated_at"]
    list_filter = ["team", "kind", "queue"]
    search_fields = ["name"]
    list_select_related = ["team", "queue"]
    fields = ["team", *SPEC_FIELDS]

    def get_readonly_fields(self, request, obj=None):
        return ["team"] if obj is not None else []

    def save_model(self, request, obj, form, change):
        spec = {name: getattr(obj, name) for name in SPEC_FIELDS}
        spec["queue"] = obj.queue.name
        if change:
            saved = definition_update(definition=obj, fields=spec)
        else:
            saved = definition_create(team=obj.team, spec=spec)
        obj.pk = saved.pk
        obj.refresh_from_db()

    def delete_model(self, request, obj):
        definition_delete(definition=obj)


class JobExecutionInline(admin.TabularInline):
    model = JobExecution
    fk_name = "job"
    extra = 0
    can_delete = False
    fields = [
        "attempt",
        "task_index",
        "node",
        "status",
        "exit_code",
        "error",
        "started_at",
        "finished_at",
        "preempted_by",
    ]
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
    list_filter = ["status", "pending_reason", "team", "queue", "preemptible"]
    search_fields = ["name", "idempotency_key", "concurrency_key"]
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
        "preemptions",
        "last_execution",
        "created_at",
        "started_at",
        "finished_at",
        *SPEC_FIELDS,
        "deadline",
        "cancel_reason",
        "array_count",
        "array_parallelism",
        "array_parent",
        "array_index",
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


class JobScheduleForm(forms.ModelForm):
    class Meta:
        model = JobSchedule
        fields = ["team", *SCHEDULE_FIELDS]

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        candidate = JobSchedule(pk=self.instance.pk)
        for name in self.Meta.fields:
            setattr(candidate, name, cleaned.get(name))
        candidate.cron = candidate.cron or ""
        schedule_validate(candidate)
        cleaned["cron"] = candidate.cron
        return cleaned


class JobScheduleRunInline(admin.TabularInline):
    model = JobScheduleRun
    extra = 0
    can_delete = False
    fields = ["due_at", "fired_at", "outcome", "job_link", "missed", "catch_up", "error"]
    readonly_fields = fields
    ordering = ["-due_at"]

    def has_add_permission(self, request, obj=None):
        return False  # runs are written by the trigger only

    @admin.display(description="job")
    def job_link(self, run):
        if run.job_id is None:
            return "-"
        url = reverse("admin:jobs_job_change", args=[run.job_id])
        return format_html('<a href="{}">job {}</a>', url, run.job_id)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("job")


@admin.register(JobSchedule)
class JobScheduleAdmin(AuditedModelAdmin):
    """Every change goes through jobs.schedules, so the beat entry follows it."""

    form = JobScheduleForm
    list_display = [
        "name",
        "team",
        "definition",
        "in_words",
        "enabled",
        "concurrency_policy",
        "misfire_policy",
        "last_fire_at",
        "next_fire_at",
    ]
    list_filter = ["enabled", "team", "concurrency_policy", "misfire_policy"]
    search_fields = ["name"]
    list_select_related = ["team", "definition__team"]
    readonly_fields = ["last_fire_at", "next_fire_at", "periodic_task"]
    inlines = [JobScheduleRunInline]
    actions = ["pause", "resume", "backfill"]

    @admin.display(description="when")
    def in_words(self, schedule):
        return describe(schedule)

    def save_model(self, request, obj, form, change):
        fields = {name: getattr(obj, name) for name in SCHEDULE_FIELDS}
        if change:
            saved = schedule_update(schedule=obj, fields=fields)
        else:
            fields.pop("definition")
            saved = schedule_create(
                team=obj.team, definition=obj.definition, fields=fields, user=request.user
            )
        obj.pk = saved.pk
        obj.refresh_from_db()

    def delete_model(self, request, obj):
        schedule_delete(schedule=obj)

    def delete_queryset(self, request, queryset):
        for schedule in queryset:
            schedule_delete(schedule=schedule)

    @admin.action(description="Pause the selected schedules")
    def pause(self, request, queryset):
        for schedule in queryset:
            schedule_pause(schedule=schedule)

    @admin.action(description="Resume the selected schedules")
    def resume(self, request, queryset):
        for schedule in queryset:
            schedule_resume(schedule=schedule)

    @admin.action(description="Backfill the selected schedules over a past range")
    def backfill(self, request, queryset):
        """A form for the range first; then each schedule's due times in it that have no
        run are submitted (or, for a dry run, listed)."""
        form = BackfillForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            context = {
                **self.admin_site.each_context(request),
                "title": "Backfill schedules",
                "opts": self.model._meta,
                "form": form,
                "schedules": queryset,
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
            }
            return TemplateResponse(request, "admin/jobs/jobschedule/backfill.html", context)
        for schedule in queryset:
            try:
                result = schedule_backfill(schedule=schedule, **form.cleaned_data)
            except ValidationError as exc:
                self.message_user(request, f"{schedule}: {' '.join(exc.messages)}", messages.ERROR)
                continue
            waiting = [due for due in result.due_times if due not in result.already_run]
            if form.cleaned_data["dry_run"]:
                listed = ", ".join(due.isoformat() for due in waiting) or "none"
                self.message_user(request, f"{schedule}: would run {len(waiting)}: {listed}")
            else:
                self.message_user(
                    request,
                    f"{schedule}: {len(result.runs)} runs backfilled, "
                    f"{len(result.already_run)} due times had run already",
                )
        return None


class BackfillForm(forms.Form):
    start = forms.DateTimeField(help_text="In UTC, e.g. 2030-01-01 00:00; included.")
    end = forms.DateTimeField(help_text="In UTC; included; not in the future.")
    dry_run = forms.BooleanField(required=False, help_text="Only list the due times.")


class JobDependencyInline(admin.TabularInline):
    model = JobDependency
    fk_name = "job"
    extra = 0
    can_delete = False
    fields = ["upstream", "on"]
    readonly_fields = fields
    verbose_name = "dependency"

    def has_add_permission(self, request, obj=None):
        return False


JobAdmin.inlines = [*JobAdmin.inlines, JobDependencyInline]
JobAdmin.readonly_fields = [
    *JobAdmin.readonly_fields,
    "cancel_reason",
    "on_unsatisfied",
    "trigger_rule",
    "workflow",
]


class WorkflowStepInline(admin.TabularInline):
    model = WorkflowStep
    extra = 0
    can_delete = False
    fields = ["name", "job", "job_status", "depends_on", "trigger_rule", "definition"]
    readonly_fields = fields
    show_change_link = False

    @admin.display(description="status")
    def job_status(self, step):
        return step.job.status

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Workflow)
class WorkflowAdmin(AuditedModelAdmin):
    """Workflows are made, cancelled and retried through the API; here they are read,
    and cancelled or retried with the same services."""

    list_display = ["id", "name", "team", "status", "max_parallel", "created_at", "finished_at"]
    list_filter = ["status", "team"]
    search_fields = ["name"]
    list_select_related = ["team"]
    date_hierarchy = "created_at"
    inlines = [WorkflowStepInline]
    readonly_fields = [
        "team",
        "name",
        "status",
        "parameters",
        "max_parallel",
        "created_by",
        "created_at",
        "finished_at",
    ]
    actions = ["cancel", "retry"]

    def has_add_permission(self, request):
        return False

    def _each(self, request, queryset, service, done: str):
        for workflow in queryset:
            try:
                service(workflow=workflow, user=request.user)
            except ValidationError as exc:
                self.message_user(request, f"{workflow}: {' '.join(exc.messages)}", "warning")
            else:
                self.message_user(request, f"{workflow}: {done}")

    @admin.action(description="Cancel every unfinished step")
    def cancel(self, request, queryset):
        self._each(request, queryset, workflow_cancel, "cancelled")

    @admin.action(description="Retry failed and cancelled steps, and what is downstream")
    def retry(self, request, queryset):
        self._each(request, queryset, workflow_retry, "retried")


@admin.register(WorkflowTemplate)
class WorkflowTemplateAdmin(AuditedModelAdmin):
    """Templates are written through the API (their steps are checked there); here they
    are read, and deleted through the same service."""

    list_display = ["name", "team", "max_parallel", "updated_at"]
    list_filter = ["team"]
    search_fields = ["name"]
    list_select_related = ["team"]
    readonly_fields = ["team", "name", "parameters", "max_parallel", "steps"]

    def has_add_permission(self, request):
        return False

    def delete_model(self, request, obj):
        workflow_template_delete(template=obj)


@admin.register(ConcurrencyLimit)
class ConcurrencyLimitAdmin(AuditedModelAdmin):
    """Saves and deletes go through the limit services, which wake the scheduler."""

    list_display = ["key", "team", "max_running", "updated_at"]
    list_filter = ["team"]
    search_fields = ["key"]
    list_select_related = ["team"]
    fields = ["team", "key", "max_running"]

    def get_readonly_fields(self, request, obj=None):
        return ["team"] if obj is not None else []

    def save_model(self, request, obj, form, change):
        if change:
            fields = {"key": obj.key, "max_running": obj.max_running}
            saved = concurrency_limit_update(limit=obj, fields=fields)
        else:
            saved = concurrency_limit_create(
                team=obj.team, key=obj.key, max_running=obj.max_running
            )
        obj.pk = saved.pk

    def delete_model(self, request, obj):
        concurrency_limit_delete(limit=obj)

    def delete_queryset(self, request, queryset):
        for limit in queryset:
            concurrency_limit_delete(limit=limit)
