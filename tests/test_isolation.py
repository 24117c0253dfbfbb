"""Tenant isolation: every endpoint, called by a team admin, member and viewer, by another
team's admin and anonymously, answers the exact status and shows no other team's data.

The endpoints are a table: add a row (an `Endpoint`) for every new one. `{name}` in a
path is filled from the world's objects (`job`, `failed_job`, ...); every object named
belongs to team azure, the team of the first three callers.
"""

from dataclasses import dataclass, field

import pytest
from django.db import transaction
from django.test import Client
from django.urls import get_resolver, resolve
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import Role, Team, User
from accounts.services import api_token_issue, audit_event_record, team_add_member
from alerts.services import alert_rule_create
from jobs.models import (
    ConcurrencyLimit,
    ExecutionStatus,
    Job,
    JobDefinition,
    JobExecution,
    JobLogChunk,
    JobStatus,
    PendingReason,
)
from jobs.schedules import schedule_create
from jobs.scheduling.cycle import place_pending_jobs
from jobs.services.executions import execution_claim
from jobs.services.submission import job_submit
from jobs.services.workflows import workflow_cancel, workflow_create, workflow_template_save
from nodes.models import Node
from resources.models import DEFAULT_QUEUE_NAME, Allocation, Queue

pytestmark = pytest.mark.django_db

ROLES = ("admin", "member", "viewer", "outsider", "anonymous")
PASSWORD = "correct horse battery"

# Strings that only one team's data contains: none may appear in what the other sees.
AZURE_MARKS = (
    "azure-team",
    "azure-job-mark",
    "azure-q",
    "AZURE-LOG-MARK",
    "AZURE-AUDIT-MARK",
    "ada-admin",
    "azure-def-mark",
    "azure-sched-mark",
    "azure-limit-mark",
    "mem-azure",
    "vic-viewer",
    "azure-wf-mark",
    "azure-alert-mark",
)
CRIMSON_MARKS = (
    "crimson-team",
    "crimson-job-mark",
    "crimson-q",
    "CRIMSON-LOG-MARK",
    "CRIMSON-AUDIT-MARK",
    "cam-crimson",
    "crimson-def-mark",
    "crimson-sched-mark",
    "crimson-wf-mark",
    "crimson-limit-mark",
    "crimson-alert-mark",
)
AZURE_JOBS, CRIMSON_JOBS = 4, 5


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    status: dict  # role -> status code; every role in ROLES
    data: dict | None = None
    # "count" in a list's answer, per team of the caller, when it must be exact.
    counts: dict = field(default_factory=dict)
    # "token" (Authorization: Token) or "session" (a browser, logged in).
    auth: str = "token"
    # Tells apart two rows of the same method and path.
    variant: str = ""

    def __str__(self):
        return f"{self.method} {self.path}" + (f" ({self.variant})" if self.variant else "")


def everyone(code, anonymous=401):
    return {**dict.fromkeys(ROLES[:4], code), "anonymous": anonymous}


def azure_only(code, outsider=404, viewer=None, anonymous=401):
    return {
        "admin": code,
        "member": code,
        "viewer": code if viewer is None else viewer,
        "outsider": outsider,
        "anonymous": anonymous,
    }


def members_own(code):
    """The member's own token: nobody else, not even their team's admin, may see it."""
    return {**everyone(404), "member": code}


STAFF_ONLY = everyone(403)
# Each team's two workflows have a step's job each; azure also has an array job of two
# tasks: three jobs more.
WORKFLOW_JOBS = 2
COUNTS_OF_JOBS = {
    "azure-team": AZURE_JOBS + WORKFLOW_JOBS + 3,
    "crimson-team": CRIMSON_JOBS + WORKFLOW_JOBS,
}
NEW_JOB = {"name": "new", "command": ["true"], "team": "azure-team"}
NEW_DEFINITION = {**NEW_JOB, "queue": "azure-q"}
NODE = {"name": "iso-node", "cpu": 8, "memory_mb": 8192}
NEW_WORKFLOW = {
    "name": "new",
    "team": "azure-team",
    "steps": [{"name": "a", "job": {"command": ["true"], "queue": "azure-q"}}],
}
NEW_ALERT = {
    "name": "new",
    "team": "azure-team",
    "condition": "job_dead_lettered",
    "channels": [{"kind": "email", "target": "oncall@example.com"}],
}

ENDPOINTS = [
    # --- auth and tokens
    Endpoint("GET", "/api/auth/me/", everyone(200)),
    Endpoint("POST", "/api/auth/login/", everyone(200, anonymous=400), data={"login": True}),
    Endpoint("POST", "/api/auth/logout/", everyone(204)),
    Endpoint("GET", "/api/auth/tokens/", everyone(200)),
    Endpoint("POST", "/api/auth/tokens/", everyone(201), data={"name": "new"}),
    Endpoint("GET", "/api/auth/tokens/{member_token}/", members_own(200)),
    Endpoint("DELETE", "/api/auth/tokens/{member_token}/", members_own(204)),
    # --- audit
    Endpoint("GET", "/api/audit/", {**everyone(403), "admin": 200, "outsider": 200}),
    # --- jobs
    Endpoint("GET", "/api/jobs/", everyone(200), counts=COUNTS_OF_JOBS),
    Endpoint("GET", "/api/jobs/?status=failed", everyone(200)),
    Endpoint("GET", "/api/jobs/?team=azure-team", everyone(200)),
    Endpoint("POST", "/api/jobs/", azure_only(201, viewer=403, outsider=400), data=NEW_JOB),
    Endpoint("GET", "/api/jobs/{job}/", azure_only(200)),
    Endpoint("GET", "/api/jobs/{job}/executions/", azure_only(200)),
    Endpoint("GET", "/api/jobs/{job}/logs/", azure_only(200)),
    Endpoint("GET", "/api/jobs/{job}/logs/?attempt=1", azure_only(200)),
    Endpoint("GET", "/api/jobs/{job}/why/", azure_only(200)),
    Endpoint("GET", "/api/jobs/{failed_job}/logs/?follow=true", azure_only(404, outsider=404)),
    Endpoint("GET", "/api/jobs/{pending_job}/why/", azure_only(200)),
    Endpoint("POST", "/api/jobs/{pending_job}/cancel/", azure_only(200, viewer=403)),
    Endpoint("POST", "/api/jobs/{pending_job}/hold/", azure_only(200, viewer=403)),
    Endpoint(
        "PATCH", "/api/jobs/{pending_job}/", azure_only(200, viewer=403), data={"priority": 3}
    ),
    Endpoint("POST", "/api/jobs/{held_job}/release/", azure_only(200, viewer=403)),
    Endpoint("POST", "/api/jobs/{failed_job}/retry/", azure_only(200, viewer=403)),
    Endpoint("POST", "/api/jobs/{failed_job}/acknowledge/", azure_only(200, viewer=403)),
    Endpoint("GET", "/api/jobs/{array_job}/", azure_only(200)),
    Endpoint(
        "PATCH",
        "/api/jobs/{array_job}/parallelism/",
        azure_only(200, viewer=403),
        data={"parallelism": 2},
    ),
    Endpoint(
        "POST",
        "/api/jobs/{array_job}/parallelism/",
        azure_only(200, viewer=403),
        data={"parallelism": 1},
    ),
    Endpoint("POST", "/api/jobs/{array_job}/cancel/", azure_only(200, viewer=403)),
    # --- definitions
    Endpoint(
        "GET", "/api/definitions/", everyone(200), counts={"azure-team": 2, "crimson-team": 2}
    ),
    Endpoint("GET", "/api/definitions/?team=azure-team", everyone(200)),
    Endpoint("GET", "/api/definitions/{definition}/", azure_only(200)),
    Endpoint(
        "POST",
        "/api/definitions/",
        azure_only(201, viewer=403, outsider=400),
        data=NEW_DEFINITION,
    ),
    Endpoint(
        "PATCH", "/api/definitions/{definition}/", azure_only(200, viewer=403), data={"priority": 5}
    ),
    Endpoint(
        "PUT",
        "/api/definitions/{definition}/",
        azure_only(200, viewer=403),
        data={"name": "azure-def-mark", "command": ["false"], "queue": "azure-q"},
    ),
    # Its schedule still uses it: refused, for those who may change it.
    Endpoint("DELETE", "/api/definitions/{definition}/", azure_only(400, viewer=403)),
    Endpoint("DELETE", "/api/definitions/{spare_definition}/", azure_only(204, viewer=403)),
    Endpoint("POST", "/api/definitions/{definition}/submit/", azure_only(201, viewer=403), data={}),
    Endpoint(
        "POST",
        "/api/jobs/",
        azure_only(201, viewer=403, outsider=400),
        data={"definition": "{definition}", "priority": 1},
        variant="from a definition",
    ),
    # --- schedules
    Endpoint("GET", "/api/schedules/", everyone(200), counts={"azure-team": 1, "crimson-team": 1}),
    Endpoint("GET", "/api/schedules/{schedule}/", azure_only(200)),
    Endpoint("GET", "/api/schedules/{schedule}/runs/", azure_only(200)),
    Endpoint("GET", "/api/schedules/{schedule}/next_runs/?count=3", azure_only(200)),
    Endpoint(
        "POST",
        "/api/schedules/",
        azure_only(201, viewer=403, outsider=400),
        data={"name": "new", "definition": "{definition}", "interval_seconds": 60},
    ),
    Endpoint(
        "PATCH",
        "/api/schedules/{schedule}/",
        azure_only(200, viewer=403),
        data={"interval_seconds": 120},
    ),
    Endpoint("POST", "/api/schedules/{schedule}/pause/", azure_only(200, viewer=403)),
    Endpoint("POST", "/api/schedules/{schedule}/resume/", azure_only(200, viewer=403)),
    Endpoint(
        "POST",
        "/api/schedules/{schedule}/backfill/",
        azure_only(200, viewer=403),
        data={"start": "2020-01-01T00:00:00Z", "end": "2020-01-01T06:00:00Z"},
    ),
    Endpoint("DELETE", "/api/schedules/{schedule}/", azure_only(204, viewer=403)),
    # --- concurrency limits
    Endpoint(
        "GET",
        "/api/concurrency-limits/",
        everyone(200),
        counts={"azure-team": 1, "crimson-team": 1},
    ),
    Endpoint("GET", "/api/concurrency-limits/{concurrency_limit}/", azure_only(200)),
    Endpoint(
        "POST",
        "/api/concurrency-limits/",
        azure_only(201, viewer=403, outsider=400),
        data={"team": "azure-team", "key": "new", "max_running": 1},
    ),
    Endpoint(
        "PATCH",
        "/api/concurrency-limits/{concurrency_limit}/",
        azure_only(200, viewer=403),
        data={"max_running": 3},
    ),
    Endpoint("DELETE", "/api/concurrency-limits/{concurrency_limit}/", azure_only(204, viewer=403)),
    # --- nodes
    Endpoint("GET", "/api/nodes/", everyone(200)),
    Endpoint("GET", "/api/nodes/iso-node/", everyone(200)),
    Endpoint("POST", "/api/nodes/iso-node/cordon/", STAFF_ONLY),
    Endpoint("POST", "/api/nodes/iso-node/drain/", STAFF_ONLY),
    Endpoint("POST", "/api/nodes/iso-node/uncordon/", STAFF_ONLY),
    # Only a node's own credential registers or heartbeats it; user tokens are no credential.
    Endpoint("POST", "/api/nodes/register/", everyone(401), data=NODE),
    Endpoint("POST", "/api/nodes/iso-node/heartbeat/", everyone(401), data={}),
    # The agents' own API: a node's credential only (another node's executions are a 404:
    # tests/jobs/test_agent_api.py); user tokens are no credential.
    Endpoint("POST", "/api/agent/claim/", everyone(401), data={"token": "job-1-attempt-1"}),
    Endpoint("POST", "/api/agent/finish/", everyone(401), data={"token": "job-1-attempt-1"}),
    Endpoint("POST", "/api/agent/successes/", everyone(401), data={"successes": []}),
    Endpoint("POST", "/api/agent/cancel-requests/", everyone(401), data={"tokens": []}),
    Endpoint("POST", "/api/agent/log-chunks/", everyone(401), data={"chunks": []}),
    # --- queues, allocations, usage
    Endpoint("GET", "/api/queues/", everyone(200), counts={"azure-team": 2, "crimson-team": 2}),
    Endpoint("GET", "/api/queues/azure-q/", azure_only(200)),
    Endpoint("POST", "/api/queues/", STAFF_ONLY, data={"name": "new-q"}),
    Endpoint("PATCH", "/api/queues/azure-q/", STAFF_ONLY, data={"weight": 5}),
    Endpoint("DELETE", "/api/queues/azure-q/", STAFF_ONLY),
    Endpoint(
        "GET", "/api/allocations/", everyone(200), counts={"azure-team": 1, "crimson-team": 1}
    ),
    Endpoint("GET", "/api/allocations/?team=crimson-team", everyone(200)),
    Endpoint("GET", "/api/allocations/{allocation}/", azure_only(200)),
    Endpoint("POST", "/api/allocations/{allocation}/release/", STAFF_ONLY),
    Endpoint("GET", "/api/resources/usage/", everyone(200)),
    # --- the usage report: each caller's own teams; another team is a 400, as unknown
    Endpoint("GET", "/api/usage/report/?by=team,queue,user", everyone(200)),
    Endpoint("GET", "/api/usage/report/?team=azure-team", azure_only(200, outsider=400)),
    # --- metrics: each caller's own teams' queues and jobs; every node
    Endpoint("GET", "/api/metrics/summary/", everyone(200)),
    # --- log search: each caller's own teams' lines
    Endpoint(
        "GET", "/api/logs/?q=log-mark", everyone(200), counts={"azure-team": 1, "crimson-team": 1}
    ),
    Endpoint("GET", "/api/logs/?q=log-mark&team=azure-team", everyone(200)),
    Endpoint("GET", "/api/logs/?q=log-mark&job={job}", everyone(200)),
    # --- events: each team's own; a node's own events are for staff. Besides its two
    # jobs' events, each team has its two workflow steps' submissions, and azure its array
    # job's and its two tasks'.
    Endpoint("GET", "/api/events/", everyone(200), counts={"azure-team": 7, "crimson-team": 4}),
    Endpoint(
        "GET", "/api/events/?job={job}", everyone(200), counts={"azure-team": 2, "crimson-team": 0}
    ),
    Endpoint("GET", "/api/jobs/{job}/events/", azure_only(200)),
    # --- alerts: team rules; staff rules (no team) are staff's alone
    Endpoint("GET", "/api/alerts/", everyone(200), counts={"azure-team": 1, "crimson-team": 1}),
    Endpoint("POST", "/api/alerts/", azure_only(201, viewer=403, outsider=400), data=NEW_ALERT),
    Endpoint("GET", "/api/alerts/{alert}/", azure_only(200)),
    Endpoint("GET", "/api/alerts/{staff_alert}/", everyone(404)),
    Endpoint("PATCH", "/api/alerts/{alert}/", azure_only(200, viewer=403), data={"enabled": False}),
    Endpoint("PUT", "/api/alerts/{alert}/", azure_only(200, viewer=403), data=NEW_ALERT),
    Endpoint("DELETE", "/api/alerts/{alert}/", azure_only(204, viewer=403)),
    Endpoint("POST", "/api/alerts/{alert}/test/", azure_only(202, viewer=403)),
    Endpoint("GET", "/api/alerts/{alert}/deliveries/", azure_only(200)),
    # --- the OpenAPI schema and its docs: public, they hold no one's data
    Endpoint("GET", "/api/schema/", everyone(200, anonymous=200)),
    Endpoint("GET", "/api/docs/", everyone(200, anonymous=200)),
    # --- web UI
    Endpoint("GET", "/", everyone(200, anonymous=302), auth="session"),
    Endpoint("GET", "/jobs/{job}/", azure_only(200, anonymous=302), auth="session"),
    Endpoint("GET", "/usage/?by=team", everyone(200, anonymous=302), auth="session"),
    Endpoint("GET", "/workflows/", everyone(200, anonymous=302), auth="session"),
    Endpoint("GET", "/workflows/{workflow}/", azure_only(200, anonymous=302), auth="session"),
    Endpoint(
        "POST",
        "/workflows/{workflow}/cancel/",
        azure_only(302, viewer=403, anonymous=302),
        auth="session",
    ),
    Endpoint(
        "POST",
        "/workflows/{cancelled_workflow}/retry/",
        azure_only(302, viewer=403, anonymous=302),
        auth="session",
    ),
    # --- workflows
    Endpoint("GET", "/api/workflows/", everyone(200), counts={"azure-team": 2, "crimson-team": 2}),
    Endpoint("GET", "/api/workflows/?team=azure-team", everyone(200)),
    Endpoint("GET", "/api/workflows/{workflow}/", azure_only(200)),
    Endpoint(
        "POST", "/api/workflows/", azure_only(201, viewer=403, outsider=400), data=NEW_WORKFLOW
    ),
    Endpoint("POST", "/api/workflows/{workflow}/cancel/", azure_only(200, viewer=403)),
    Endpoint("POST", "/api/workflows/{cancelled_workflow}/retry/", azure_only(200, viewer=403)),
    Endpoint(
        "GET",
        "/api/workflow-templates/",
        everyone(200),
        counts={"azure-team": 1, "crimson-team": 1},
    ),
    Endpoint("GET", "/api/workflow-templates/?team=azure-team", everyone(200)),
    Endpoint("GET", "/api/workflow-templates/{workflow_template}/", azure_only(200)),
    Endpoint(
        "POST",
        "/api/workflow-templates/",
        azure_only(201, viewer=403, outsider=400),
        data=NEW_WORKFLOW,
    ),
    Endpoint(
        "PATCH",
        "/api/workflow-templates/{workflow_template}/",
        azure_only(200, viewer=403),
        data={"max_parallel": 2},
    ),
    Endpoint(
        "PUT",
        "/api/workflow-templates/{workflow_template}/",
        azure_only(200, viewer=403),
        data={**NEW_WORKFLOW, "name": "azure-wf-mark-template"},
    ),
    Endpoint(
        "POST",
        "/api/workflow-templates/{workflow_template}/submit/",
        azure_only(201, viewer=403),
        data={},
    ),
    Endpoint("DELETE", "/api/workflow-templates/{workflow_template}/", azure_only(204, viewer=403)),
]


def submit(team, queue, name, **fields):
    return Job.objects.create(
        team=team,
        queue=queue,
        name=name,
        command=["true"],
        cpu_millis=1000,
        memory_mb=100,
        **fields,
    )


@pytest.fixture(scope="module")
def shared_world(django_db_setup, django_db_blocker):
    """The world, built once for the module's ~550 requests inside a transaction rolled
    back when the module ends. Each test runs in a savepoint of it (pytest-django's
    `db`), so whatever a request changes is gone for the next."""
    with django_db_blocker.unblock():
        atomic = transaction.atomic()
        atomic.__enter__()
        try:
            Queue.objects.get_or_create(name=DEFAULT_QUEUE_NAME, defaults={"all_teams": True})
            yield build_world()
        finally:
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)


@pytest.fixture
def world(shared_world, db):
    return shared_world


def build_world() -> dict:
    """Two teams, each with a running job (its log holds a mark), a failed one and pending
    ones, a queue of its own, an allocation and audit events."""
    azure = Team.objects.create(name="Azure", slug="azure-team")
    crimson = Team.objects.create(name="Crimson", slug="crimson-team")
    users = {}
    for role, username, team, team_role in (
        ("admin", "ada-admin", azure, Role.ADMIN),
        ("member", "mem-azure", azure, Role.MEMBER),
        ("viewer", "vic-viewer", azure, Role.VIEWER),
        ("outsider", "cam-crimson", crimson, Role.ADMIN),
    ):
        users[role] = User.objects.create_user(username, password=PASSWORD)
        team_add_member(team=team, user=users[role], role=team_role)
    node = Node.objects.create(name="iso-node", cpu_millis=8000, memory_mb=8192)
    teams = ((azure, "azure", AZURE_JOBS), (crimson, "crimson", CRIMSON_JOBS))
    queues = {}
    for team, mark, _ in teams:
        queues[mark] = Queue.objects.create(name=f"{mark}-q")
        queues[mark].teams.add(team)
        submit(team, queues[mark], f"{mark}-job-mark-running")
    place_pending_jobs(batch_size=10)
    objects = {"users": users}
    for team, mark, count in teams:
        execution = JobExecution.objects.get(job__team=team)
        execution_claim(token=execution.token, node_id=node.pk)
        JobExecution.objects.filter(pk=execution.pk).update(
            log_tail=f"{mark.upper()}-LOG-MARK output\n"
        )
        JobLogChunk.objects.create(
            execution=execution, seq=0, first_line=1, offset=0, text=f"{mark.upper()}-LOG-MARK\n"
        )
        failed = submit(team, queues[mark], f"{mark}-job-mark-failed", status=JobStatus.FAILED)
        Job.objects.filter(pk=failed.pk).update(attempts=1, finished_at=timezone.now())
        pending = [submit(team, queues[mark], f"{mark}-job-mark-pending") for _ in range(count - 2)]
        Job.objects.filter(pk=pending[-1].pk).update(pending_reason=PendingReason.HELD)
        audit_event_record(
            action="job.create", team_id=team.pk, object_repr=f"{mark.upper()}-AUDIT-MARK"
        )
        definition = JobDefinition.objects.create(
            team=team, queue=queues[mark], name=f"{mark}-def-mark", command=["true"]
        )
        spare = JobDefinition.objects.create(
            team=team, queue=queues[mark], name=f"{mark}-def-mark-spare", command=["true"]
        )
        schedule = schedule_create(
            team=team,
            definition=definition,
            fields={"name": f"{mark}-sched-mark", "interval_seconds": 3600},
        )
        step = {"command": ["true"], "cpu_millis": 100, "memory_mb": 100, "gpu": 0}
        step["queue"] = f"{mark}-q"
        workflow = workflow_create(
            team=team, name=f"{mark}-wf-mark", steps=[{"name": "a", "job": step}]
        )
        cancelled = workflow_create(
            team=team, name=f"{mark}-wf-mark-cancelled", steps=[{"name": "a", "job": step}]
        )
        workflow_cancel(workflow=cancelled)
        template = workflow_template_save(
            team=team,
            fields={"name": f"{mark}-wf-mark-template", "steps": [{"name": "a", "job": step}]},
        )
        limit = ConcurrencyLimit.objects.create(team=team, key=f"{mark}-limit-mark", max_running=2)
        alert, _ = alert_rule_create(
            team=team,
            fields={"name": f"{mark}-alert-mark", "condition": "job_dead_lettered"},
            channels=[{"kind": "webhook", "target": "http://127.0.0.1:9/hook"}],
            user=None,
        )
        if team == azure:
            objects |= {
                "workflow_template": template.pk,
                "workflow": workflow.pk,
                "cancelled_workflow": cancelled.pk,
                "alert": alert.pk,
                "definition": definition.pk,
                "spare_definition": spare.pk,
                "schedule": schedule.pk,
                "job": execution.job_id,
                "failed_job": failed.pk,
                "pending_job": pending[0].pk,
                "held_job": pending[-1].pk,
                "allocation": Allocation.objects.get(execution=execution).pk,
                "concurrency_limit": limit.pk,
                "array_job": job_submit(
                    team=team,
                    spec={
                        "name": f"{mark}-job-mark-array",
                        "command": ["true"],
                        "cpu_millis": 1000,
                        "memory_mb": 100,
                        "gpu": 0,
                        "queue": queues[mark].name,
                        "array": {"count": 2, "parallelism": 1},
                    },
                ).job.pk,
            }
    assert JobExecution.objects.filter(status=ExecutionStatus.RUNNING).count() == 2
    objects["staff_alert"] = alert_rule_create(
        team=None,
        fields={"name": "nodes", "condition": "node_offline"},
        channels=[{"kind": "email", "target": "ops@example.com"}],
        user=None,
    )[0].pk
    objects["member_token"] = api_token_issue(user=users["member"], name="spare").token.pk
    return objects


def client_for(role, world, endpoint):
    if role == "anonymous":
        return Client() if endpoint.auth == "session" else APIClient()
    user = world["users"][role]
    if endpoint.auth == "session":
        client = Client()
        client.force_login(user)
        return client
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_issue(user=user, name='matrix').key}")
    return client


def request_data(endpoint, role, world):
    if endpoint.data == {"login": True}:
        if role == "anonymous":
            return {"username": "nobody", "password": "wrong"}
        return {"username": world["users"][role].username, "password": PASSWORD}
    if endpoint.data is None:
        return None
    objects = {k: v for k, v in world.items() if k != "users"}
    return {
        k: int(v.format(**objects)) if isinstance(v, str) and v.startswith("{") else v
        for k, v in endpoint.data.items()
    }


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_each_role_gets_the_exact_status_and_no_foreign_data(world, endpoint, role):
    assert set(endpoint.status) == set(ROLES), endpoint
    client = client_for(role, world, endpoint)
    path = endpoint.path.format(**{k: v for k, v in world.items() if k != "users"})
    data = request_data(endpoint, role, world)
    call = getattr(client, endpoint.method.lower())
    response = call(path, data, format="json") if data is not None else call(path)

    assert response.status_code == endpoint.status[role], (role, path, response.content[:500])
    body = b"".join(response.streaming_content) if response.streaming else response.content
    text = body.decode()
    foreign = {
        "outsider": AZURE_MARKS,
        "anonymous": AZURE_MARKS + CRIMSON_MARKS,
    }.get(role, CRIMSON_MARKS)
    leaked = [mark for mark in foreign if mark in text]
    assert not leaked, (role, path, leaked, text[:500])
    if endpoint.counts and response.status_code == 200:
        team = "crimson-team" if role == "outsider" else "azure-team"
        body = response.json()
        # The jobs list is paged by cursor and has no count; the world fits in one page.
        count = body["count"] if "count" in body else len(body["results"])
        assert count == endpoint.counts[team], (role, path)


def test_the_matrix_covers_every_api_route():
    """A new route under /api/ without a row in ENDPOINTS fails here."""
    routes = {
        f"api/{str(route.pattern).lstrip('^')}"
        for included in get_resolver().url_patterns
        if str(included.pattern) == "api/"
        for route in included.url_patterns
        if "(?P<format>" not in str(route.pattern)
    }
    placeholders = dict.fromkeys(
        (
            "job",
            "failed_job",
            "pending_job",
            "held_job",
            "allocation",
            "member_token",
            "schedule",
            "definition",
            "spare_definition",
            "workflow",
            "cancelled_workflow",
            "workflow_template",
            "concurrency_limit",
            "array_job",
            "alert",
            "staff_alert",
        ),
        1,
    )
    covered = {resolve(e.path.split("?")[0].format(**placeholders)).route for e in ENDPOINTS}
    assert routes - covered == set()


@pytest.mark.parametrize(
    ("path", "marks"),
    [
        ("/api/jobs/", ["azure-job-mark", "crimson-job-mark"]),
        ("/api/jobs/{job}/logs/", ["AZURE-LOG-MARK"]),
        ("/api/queues/", ["azure-q", "crimson-q"]),
        ("/api/allocations/", ["azure-team", "crimson-team"]),
        ("/api/audit/", ["AZURE-AUDIT-MARK", "CRIMSON-AUDIT-MARK"]),
        ("/api/schedules/", ["azure-sched-mark", "crimson-sched-mark"]),
        ("/api/definitions/", ["azure-def-mark", "crimson-def-mark"]),
        ("/api/concurrency-limits/", ["azure-limit-mark", "crimson-limit-mark"]),
        ("/api/resources/usage/", ["azure-team", "crimson-team", "azure-q", "crimson-q"]),
        ("/api/metrics/summary/", ["azure-q", "crimson-q"]),
        (
            "/api/usage/report/?by=team,queue",
            ["azure-team", "crimson-team", "azure-q", "crimson-q"],
        ),
        ("/api/workflows/", ["azure-wf-mark", "crimson-wf-mark"]),
        ("/api/workflow-templates/", ["azure-wf-mark", "crimson-wf-mark"]),
        ("/api/logs/?q=log-mark", ["AZURE-LOG-MARK", "CRIMSON-LOG-MARK"]),
        ("/api/events/", ["azure-team", "crimson-team"]),
        ("/api/alerts/", ["azure-alert-mark", "crimson-alert-mark"]),
    ],
)
def test_staff_see_both_teams_marks_so_a_leak_would_show(world, staff_api, path, marks):
    response = staff_api.get(path.format(job=world["job"]))
    text = (
        b"".join(response.streaming_content) if response.streaming else response.content
    ).decode()
    assert [mark for mark in marks if mark not in text] == []
