"""The web UI's pages, through Django's test client: login required, another team's
objects 404, viewers see no action and are refused one (403, nothing changed), forms
carry CSRF protection and show the API's field errors beside their fields."""

import re

import pytest
from django.test import Client

from accounts.models import Role, User
from accounts.services import team_add_member
from jobs.models import (
    ExecutionStatus,
    Job,
    JobDefinition,
    JobExecution,
    JobSchedule,
    JobStatus,
    PendingReason,
)
from jobs.services.workflows import workflow_create
from jobs.views import job_change as job_change_views
from jobs.views import job_page as job_page_views
from nodes.models import Node
from tests.conftest import token_client

pytestmark = pytest.mark.django_db

PAGES = [
    "/",
    "/jobs/",
    "/jobs/?dead_letter=true",
    "/jobs/new/",
    "/definitions/",
    "/schedules/",
    "/schedules/new/",
    "/workflows/",
    "/nodes/",
    "/usage/",
    "/alerts/",
]


@pytest.fixture
def job(team, default_queue):
    return Job.objects.create(team=team, queue=default_queue, name="visible-job", command=["true"])


@pytest.fixture
def viewer(team):
    user = User.objects.create_user("vic", password="correct horse battery")
    team_add_member(team=team, user=user, role=Role.VIEWER)
    return user


@pytest.fixture
def definition(team, default_queue):
    return JobDefinition.objects.create(
        team=team, queue=default_queue, name="nightly", command=["echo", "hi"]
    )


def logged_in(user) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def csrf_post(client, path, data):
    """A POST as the browser sends it: with the token of the page's form."""
    token = client.cookies["csrftoken"].value if "csrftoken" in client.cookies else None
    if token is None:
        client.get("/jobs/")
        token = client.cookies["csrftoken"].value
    return client.post(path, {**data, "csrfmiddlewaretoken": token})


def test_the_pages_need_a_login(client):
    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 302, path
        assert response["Location"].startswith("/login/")


def test_every_page_answers_a_member(member, job, small_node, definition):
    client = logged_in(member)
    for path in [*PAGES, f"/jobs/{job.pk}/"]:
        assert client.get(path).status_code == 200, path


def test_the_overview_shows_the_nodes_and_queues(member, job, small_node):
    page = logged_in(member).get("/").content.decode()
    assert "static-1" in page
    assert "default" in page
    assert "Jobs finished per minute" in page


def test_the_jobs_list_filters_by_the_url_and_pages_by_cursor(member, team, default_queue):
    jobs = [
        Job.objects.create(team=team, queue=default_queue, name=f"job-{i}", command=["true"])
        for i in range(55)
    ]
    Job.objects.filter(pk=jobs[0].pk).update(status=JobStatus.SUCCEEDED)
    client = logged_in(member)

    first = client.get("/jobs/").content.decode()
    assert "job-54<" in first and "job-5<" in first and "job-4<" not in first
    older = re.search(r'href="\?after=(\d+)"', first).group(1)
    second = client.get(f"/jobs/?after={older}").content.decode()
    assert "job-4<" in second and "job-5<" not in second

    succeeded = client.get("/jobs/?status=succeeded").content.decode()
    assert "job-0<" in succeeded and "job-1<" not in succeeded
    assert re.search(
        r"data-refresh=\"/jobs/\?status=succeeded&amp;(amp;)?fragment=rows\"", succeeded
    ), re.findall('data-refresh="[^"]*', succeeded)


def test_a_bad_filter_is_shown_not_a_500(member):
    response = logged_in(member).get("/jobs/?status=bogus&created_after=yesterday")
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()


def test_another_teams_job_page_is_404_and_not_listed(outsider, job):
    client = logged_in(outsider)
    assert "visible-job" not in client.get("/jobs/").content.decode()
    assert client.get(f"/jobs/{job.pk}/").status_code == 404
    assert csrf_post(client, f"/jobs/{job.pk}/cancel/", {}).status_code == 404
    assert client.get(f"/jobs/{job.pk}/change/").status_code == 404
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING


def test_a_viewer_sees_no_action_and_a_forged_post_is_refused(viewer, job):
    client = logged_in(viewer)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "Cancel</button>" not in page
    assert "Submit again" not in page
    assert f"/jobs/{job.pk}/change/" not in page
    assert "Cancel</button>" not in client.get("/jobs/").content.decode()
    assert client.get(f"/jobs/{job.pk}/change/").status_code == 403
    assert csrf_post(client, f"/jobs/{job.pk}/change/", {"priority": "5"}).status_code == 403

    assert csrf_post(client, f"/jobs/{job.pk}/cancel/", {}).status_code == 403
    assert csrf_post(client, "/jobs/bulk/", {"action": "cancel", "job": job.pk}).status_code == 403
    assert client.get("/jobs/new/").status_code == 403
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING


def test_every_form_carries_csrf_protection(member, job, definition, small_node):
    client = logged_in(member)
    for path in ["/jobs/", f"/jobs/{job.pk}/", f"/jobs/{job.pk}/change/", "/jobs/new/"]:
        page = client.get(path).content.decode()
        forms = re.findall(r"<form[^>]*method=\"post\".*?</form>", page, re.S)
        assert forms, path
        assert all("csrfmiddlewaretoken" in form for form in forms), path
    # Without the token the POST is refused and changes nothing.
    assert client.post(f"/jobs/{job.pk}/cancel/").status_code == 403
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING


def test_a_member_cancels_and_requeues_from_the_job_page(member, job):
    client = logged_in(member)
    response = csrf_post(client, f"/jobs/{job.pk}/cancel/", {})
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    csrf_post(client, f"/jobs/{job.pk}/requeue/", {})
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING


def test_a_member_holds_and_releases_from_the_job_page(member, job):
    client = logged_in(member)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert f'action="/jobs/{job.pk}/hold/"' in page and "/release/" not in page
    assert csrf_post(client, f"/jobs/{job.pk}/hold/", {}).status_code == 302
    job.refresh_from_db()
    assert (job.status, job.pending_reason) == (JobStatus.PENDING, PendingReason.HELD)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert f'action="/jobs/{job.pk}/release/"' in page and "/hold/" not in page
    assert "Held: it waits until released" in page
    csrf_post(client, f"/jobs/{job.pk}/release/", {})
    job.refresh_from_db()
    assert (job.status, job.pending_reason) == (JobStatus.PENDING, PendingReason.NONE)


def change_form(client, job) -> dict:
    """The change form's fields as the page fills them."""
    page = client.get(f"/jobs/{job.pk}/change/").content.decode()
    values = dict(re.findall(r'<input name="(\w+)" value="([^"]*)"', page))
    return {**values, "queue": re.search(r"<option selected>([^<]+)<", page).group(1)}


def test_a_member_changes_a_pending_job_from_its_page_with_the_apis_messages(
    member, job, small_node
):
    client = logged_in(member)
    assert f'href="/jobs/{job.pk}/change/"' in client.get(f"/jobs/{job.pk}/").content.decode()
    form = change_form(client, job)
    assert form == {
        "queue": "default",
        "priority": "0",
        "cpu": "1",
        "memory_mb": "256",
        "gpu": "0",
        "node_selector": "",
        "timeout_seconds": "",
        "cpu_time_limit_seconds": "",
        "max_retries": "0",
        "retry_backoff_seconds": "10",
    }
    refused = csrf_post(client, f"/jobs/{job.pk}/change/", {**form, "cpu": "64", "gpu": "x"})
    assert refused.status_code == 400
    page = refused.content.decode()
    assert re.search(r'data-field="gpu"><li>A valid integer is required', page)
    too_large = csrf_post(client, f"/jobs/{job.pk}/change/", {**form, "cpu": "64"})
    assert re.search(
        r'data-field="cpu"><li>Requests 64 CPU, but the largest node has 4 CPU',
        too_large.content.decode(),
    )
    job.refresh_from_db()
    assert (job.cpu_millis, job.priority) == (1000, 0)
    response = csrf_post(
        client, f"/jobs/{job.pk}/change/", {**form, "priority": "4", "node_selector": "zone=a"}
    )
    assert response.status_code == 302
    job.refresh_from_db()
    assert (job.priority, job.node_selector, job.cpu_millis) == (4, {"zone": "a"}, 1000)
    page = client.get(response.url).content.decode()
    assert (
        "changed by alice: priority 0 → 4; node_selector {} → {&quot;zone&quot;: &quot;a&quot;}"
        in page
    )
    # A job that is no longer pending has no form, and a forged post changes nothing.
    Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, pending_reason="")
    assert "/change/" not in client.get(f"/jobs/{job.pk}/").content.decode()
    assert "<form" not in change_form_page(client, job)
    forged = csrf_post(client, f"/jobs/{job.pk}/change/", {**form, "priority": "9"})
    assert forged.status_code == 400
    assert "Only a pending job can be changed; this one is running." in forged.content.decode()
    job.refresh_from_db()
    assert job.priority == 4


def change_form_page(client, job) -> str:
    page = client.get(f"/jobs/{job.pk}/change/").content.decode()
    return page.split("<h1>", 1)[1]


def test_a_member_holds_the_checked_jobs_and_is_told_which_could_not_be(member, job):
    running = Job.objects.create(
        team=job.team, queue=job.queue, name="r", command=["true"], status=JobStatus.RUNNING
    )
    client = logged_in(member)
    response = csrf_post(client, "/jobs/bulk/", {"action": "hold", "job": [job.pk, running.pk]})
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.pending_reason == PendingReason.HELD
    page = client.get(response.url).content.decode()
    assert "Hold: 1 job(s)." in page
    assert f"job {running.pk}: Only a pending job can be held; this one is running." in page


def test_the_submit_form_shows_the_apis_field_errors(member, small_node):
    client = logged_in(member)
    response = csrf_post(
        client,
        "/jobs/new/",
        {
            "team": "blue",
            "name": "",
            "command": "echo 'open",
            "cpu": "64",
            "memory_mb": "x",
            "gpu": "0",
            "queue": "default",
            "priority": "0",
            "max_retries": "0",
        },
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert re.search(r'data-field="command">.*Cannot split it', page)
    assert not Job.objects.exists()

    response = csrf_post(
        client,
        "/jobs/new/",
        {
            "team": "blue",
            "name": "",
            "command": "echo hi",
            "cpu": "64",
            "memory_mb": "x",
            "gpu": "0",
            "queue": "default",
            "priority": "0",
            "max_retries": "0",
            "cpu_time_limit_seconds": "0",
        },
    )
    page = response.content.decode()
    assert re.search(r'data-field="cpu_time_limit_seconds">.*greater than or equal to 1', page)
    assert re.search(r'data-field="name">.*This field may not be blank', page)
    assert re.search(r'data-field="memory_mb">.*valid integer', page)
    assert not Job.objects.exists()


def test_the_submit_form_submits_and_submit_again_fills_it(member, small_node):
    client = logged_in(member)
    response = csrf_post(
        client,
        "/jobs/new/",
        {
            "team": "blue",
            "name": "from-form",
            "command": "sh -c 'echo hi'",
            "cpu": "0.5",
            "memory_mb": "128",
            "gpu": "0",
            "queue": "default",
            "priority": "2",
            "max_retries": "1",
            "cpu_time_limit_seconds": "90",
            "node_selector": "zone=a",
        },
    )
    job = Job.objects.get()
    assert response["Location"] == f"/jobs/{job.pk}/"
    assert (job.command, job.cpu_millis, job.priority) == (["sh", "-c", "echo hi"], 500, 2)
    assert job.node_selector == {"zone": "a"}
    assert (job.tasks, job.preemptible) == (1, False)  # the queue's default
    assert job.cpu_time_limit_seconds == 90
    assert (
        "<th>CPU time limit</th><td>90 s a process</td>"
        in client.get(response["Location"]).content.decode()
    )
    again = client.get(f"/jobs/new/?from={job.pk}").content.decode()
    assert 'value="from-form"' in again and "sh -c &#x27;echo hi&#x27;" in again
    assert 'name="cpu_time_limit_seconds" value="90"' in again


def test_the_submit_form_submits_a_preemptible_gang(member, small_node):
    client = logged_in(member)
    fields = {
        "team": "blue",
        "name": "gang",
        "command": "true",
        "cpu": "0.5",
        "memory_mb": "128",
        "gpu": "0",
        "tasks": "0",
        "queue": "default",
        "priority": "0",
        "preemptible": "yes",
        "max_retries": "0",
    }
    response = csrf_post(client, "/jobs/new/", fields)
    assert response.status_code == 400
    assert re.search(r'data-field="tasks">.*greater than or equal to 1', response.content.decode())
    assert not Job.objects.exists()

    csrf_post(client, "/jobs/new/", {**fields, "tasks": "3"})
    job = Job.objects.get()
    assert (job.tasks, job.preemptible) == (3, True)
    again = client.get(f"/jobs/new/?from={job.pk}").content.decode()
    assert 'name="tasks" value="3"' in again and '<option value="yes" selected>' in again


def test_the_submit_form_submits_from_a_definition(member, definition, small_node):
    client = logged_in(member)
    csrf_post(client, "/jobs/new/", {"definition": definition.pk, "name": "", "priority": "3"})
    job = Job.objects.get()
    assert (job.definition_id, job.command, job.priority) == (definition.pk, ["echo", "hi"], 3)


def test_the_why_panel_shows_the_why_answer(member, team, default_queue):
    Node.objects.create(name="node-busy", cpu_millis=1000, memory_mb=4096, allocated_cpu_millis=500)
    job = Job.objects.create(
        team=team,
        queue=default_queue,
        name="big",
        command=["true"],
        cpu_millis=2000,
        pending_reason=PendingReason.INSUFFICIENT_CAPACITY,
    )
    client = logged_in(member)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    why = client.get(f"/api/jobs/{job.pk}/why/").json()
    assert why["summary"] in page
    assert "needs 2 CPU, has 1 in all" in page
    assert "node-busy" in page


def test_a_schedule_with_a_bad_cron_shows_the_field_error(member, definition):
    client = logged_in(member)
    response = csrf_post(
        client,
        "/schedules/new/",
        {
            "name": "bad",
            "definition": definition.pk,
            "cron": "61 * * * *",
            "timezone": "UTC",
            "concurrency_policy": "allow",
            "misfire_policy": "run_once",
        },
    )
    assert response.status_code == 400
    assert re.search(r'data-field="cron">.*not a valid cron', response.content.decode())
    assert not JobSchedule.objects.exists()


def test_a_schedule_previews_five_runs_and_pauses_and_resumes(member, definition):
    client = logged_in(member)
    preview = client.get("/schedules/preview/?cron=0+9+*+*+1-5&timezone=Europe/Berlin")
    assert preview.content.decode().count("<li>") == 5
    response = csrf_post(
        client,
        "/schedules/new/",
        {
            "name": "weekdays",
            "definition": definition.pk,
            "cron": "0 9 * * 1-5",
            "timezone": "Europe/Berlin",
            "concurrency_policy": "allow",
            "misfire_policy": "run_once",
        },
    )
    schedule = JobSchedule.objects.get()
    assert response["Location"] == f"/schedules/{schedule.pk}/"
    page = client.get(f"/schedules/{schedule.pk}/").content.decode()
    assert page.count("Europe/Berlin") >= 1
    assert re.search(r'<ol id="next-runs">(.*?)</ol>', page, re.S).group(1).count("<li>") == 5
    csrf_post(client, f"/schedules/{schedule.pk}/pause/", {})
    schedule.refresh_from_db()
    assert not schedule.enabled
    csrf_post(client, f"/schedules/{schedule.pk}/resume/", {})
    schedule.refresh_from_db()
    assert schedule.enabled


def test_only_staff_cordon_nodes_from_the_nodes_page(member, staff, small_node):
    assert "Cordon" not in logged_in(member).get("/nodes/").content.decode()
    assert csrf_post(logged_in(member), "/nodes/static-1/cordon/", {}).status_code == 403
    client = logged_in(staff)
    assert "Cordon" in client.get("/nodes/").content.decode()
    csrf_post(client, "/nodes/static-1/cordon/", {})
    small_node.refresh_from_db()
    assert small_node.status == "cordoned"


def test_the_audit_page_is_for_team_admins(member, staff):
    assert logged_in(member).get("/audit/").status_code == 403
    assert logged_in(staff).get("/audit/").status_code == 200


def _queries(client, path) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        assert client.get(path).status_code == 200
    return len(captured.captured_queries)


def test_the_pages_cost_the_same_queries_with_more_jobs(member, team, default_queue, small_node):
    client = logged_in(member)
    job = Job.objects.create(team=team, queue=default_queue, name="first", command=["true"])
    paths = ["/", "/jobs/", "/jobs/?status=pending", f"/jobs/{job.pk}/"]
    few = {path: _queries(client, path) for path in paths}
    Job.objects.bulk_create(
        Job(team=team, queue=default_queue, name=f"more-{i}", command=["true"]) for i in range(60)
    )
    assert {path: _queries(client, path) for path in paths} == few


def test_the_job_page_names_the_gpus_an_attempt_ran_on(member, job, small_node):
    JobExecution.objects.create(
        job=job,
        attempt=1,
        node=small_node,
        token="gpu-attempt",
        status=ExecutionStatus.SUCCEEDED,
        reserved_at=job.created_at,
        gpu_ids=[2, 3],
    )
    page = logged_in(member).get(f"/jobs/{job.pk}/").content.decode()
    assert re.search(r"<td>static-1 <span class=\"muted\">GPU 2, 3</span></td>", page)


def test_an_array_is_held_and_released_whole_from_its_page(member, team, small_node):
    client = logged_in(member)
    api = token_client(member)
    array_id = api.post(
        "/api/jobs/", {"name": "a", "command": ["true"], "array": {"count": 3}}, format="json"
    ).json()["id"]
    page = client.get(f"/jobs/{array_id}/").content.decode()
    assert f'action="/jobs/{array_id}/hold/"' in page and "/release/" not in page
    assert csrf_post(client, f"/jobs/{array_id}/hold/", {}).status_code == 302
    assert Job.objects.get(pk=array_id).held_at is not None
    page = client.get(f"/jobs/{array_id}/").content.decode()
    assert f'action="/jobs/{array_id}/release/"' in page and "/hold/" not in page
    # Its tasks are released only with it: no button offers to release one alone.
    task = Job.objects.filter(array_parent_id=array_id).first()
    assert (
        f'action="/jobs/{task.pk}/release/"' not in client.get(f"/jobs/{task.pk}/").content.decode()
    )
    csrf_post(client, f"/jobs/{array_id}/release/", {})
    assert Job.objects.get(pk=array_id).held_at is None


def test_an_action_on_a_job_gone_since_the_page_read_it_is_a_404(member, job, monkeypatch):
    # The job is purged between the view's read and the service's lock.
    stale = Job.objects.get(pk=job.pk)
    Job.objects.filter(pk=job.pk).delete()
    for view in (job_page_views, job_change_views):
        monkeypatch.setattr(view, "job_visible_or_404", lambda request, pk: stale)
    client = logged_in(member)
    assert csrf_post(client, f"/jobs/{job.pk}/hold/", {}).status_code == 404
    form = {"queue": "default", "priority": "1", "cpu": "1", "memory_mb": "256", "gpu": "0"}
    form |= {"node_selector": "", "timeout_seconds": "", "max_retries": "0"}
    form["cpu_time_limit_seconds"] = ""
    form["retry_backoff_seconds"] = "10"
    assert csrf_post(client, f"/jobs/{job.pk}/change/", form).status_code == 404


def diamond(team, name="diamond"):
    """top -> (left, right) -> bottom, with a lone step beside them."""
    spec = {"command": ["true"], "cpu_millis": 100, "memory_mb": 64, "gpu": 0}
    return workflow_create(
        team=team,
        name=name,
        parameters={"day": "monday"},
        steps=[
            {"name": "bottom", "job": spec, "depends_on": ["left", "right"]},
            {"name": "right", "job": spec, "depends_on": ["top"]},
            {"name": "top", "job": spec},
            {"name": "left", "job": spec, "depends_on": ["top"]},
            {"name": "lone", "job": spec},
        ],
    )


def step_rows(page: str) -> list[list[str]]:
    """The steps table's cells (level, step, job, waits on, rule, state...), tags dropped."""
    body = re.search(r'<table id="steps">.*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    return [
        [
            re.sub(r"<[^>]+>", "", cell).strip()
            for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        ]
        for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)
    ]


def test_a_workflows_page_shows_its_steps_by_level_and_it_is_cancelled_and_retried(
    member, team, default_queue, small_node
):
    workflow = diamond(team)
    client = logged_in(member)
    listed = client.get("/workflows/").content.decode()
    assert f'href="/workflows/{workflow.pk}/">diamond</a>' in listed

    page = client.get(f"/workflows/{workflow.pk}/").content.decode()
    rows = step_rows(page)
    assert [row[:2] for row in rows] == [
        ["0", "top"], ["0", "lone"], ["1", "right"], ["1", "left"], ["2", "bottom"]
    ]  # fmt: skip
    jobs = {step.name: step.job_id for step in workflow.steps.all()}
    assert [row[2] for row in rows] == [str(jobs[row[1]]) for row in rows]
    assert rows[4][3:6] == ["left, right", "all_succeeded", "pending waiting_dependencies"]
    assert '<span id="step-states">5 pending</span>' in page
    assert "<code>day=monday</code>" in page
    assert "Retry failed steps" not in page
    assert f'data-refresh="/workflows/{workflow.pk}/?fragment=live"' in page
    fragment = client.get(f"/workflows/{workflow.pk}/?fragment=live").content.decode()
    assert "<html" not in fragment and step_rows(fragment) == rows
    assert "data-final" not in fragment
    # Each step's job page links back to the workflow.
    job_page = client.get(f"/jobs/{jobs['left']}/").content.decode()
    assert (
        f'step left of <a href="/workflows/{workflow.pk}/" id="job-workflow">diamond</a>'
        in job_page
    )

    response = csrf_post(client, f"/workflows/{workflow.pk}/cancel/", {})
    assert response.status_code == 302 and response["Location"] == f"/workflows/{workflow.pk}/"
    page = client.get(f"/workflows/{workflow.pk}/").content.decode()
    assert 'id="workflow-state">cancelled<' in page
    assert '<span id="step-states">5 cancelled</span>' in page
    assert "Cancel asked for every unfinished step." in page
    assert "Cancel</button>" not in page
    # Ended: the page no longer refreshes, and the fragment says it is final.
    assert "data-refresh" not in page
    assert "data-final" in client.get(f"/workflows/{workflow.pk}/?fragment=live").content.decode()
    # Cancelled again: the service's refusal is shown, nothing changes.
    page = client.get(csrf_post(client, f"/workflows/{workflow.pk}/cancel/", {})["Location"])
    assert "The workflow already ended (cancelled)." in page.content.decode()

    csrf_post(client, f"/workflows/{workflow.pk}/retry/", {})
    workflow.refresh_from_db()
    assert workflow.status == "running"
    assert set(Job.objects.filter(pk__in=jobs.values()).values_list("status", flat=True)) == {
        JobStatus.PENDING
    }


def test_the_workflows_list_filters_pages_and_refuses_a_bad_state(
    member, team, default_queue, small_node
):
    made = [diamond(team, name=f"flow-{i}") for i in range(52)]
    made[0].status = "succeeded"
    made[0].save(update_fields=["status"])
    client = logged_in(member)
    first = client.get("/workflows/").content.decode()
    assert ">flow-51<" in first and ">flow-2<" in first and ">flow-1<" not in first
    before = re.search(r'before=(\d+)">Older', first).group(1)
    second = client.get(f"/workflows/?before={before}").content.decode()
    assert ">flow-1<" in second and ">flow-0<" in second and ">flow-2<" not in second
    succeeded = client.get("/workflows/?status=succeeded").content.decode()
    assert ">flow-0<" in succeeded and ">flow-1<" not in succeeded
    nobodys = client.get("/workflows/?team=nobody").content.decode()
    assert ">flow-" not in nobodys and "No workflow matches." in nobodys
    assert ">flow-51<" in client.get(f"/workflows/?team={team.slug}").content.decode()
    refused = client.get("/workflows/?status=bogus")
    assert refused.status_code == 400
    assert "State: choose one of running, succeeded, failed, cancelled." in refused.content.decode()


def test_another_teams_workflow_is_404_and_a_viewer_may_not_act(
    outsider, viewer, team, default_queue, small_node
):
    workflow = diamond(team)
    client = logged_in(outsider)
    assert "diamond" not in client.get("/workflows/").content.decode()
    assert client.get(f"/workflows/{workflow.pk}/").status_code == 404
    assert csrf_post(client, f"/workflows/{workflow.pk}/cancel/", {}).status_code == 404
    client = logged_in(viewer)
    page = client.get(f"/workflows/{workflow.pk}/").content.decode()
    assert "Cancel</button>" not in page
    assert csrf_post(client, f"/workflows/{workflow.pk}/cancel/", {}).status_code == 403
    assert client.post(f"/workflows/{workflow.pk}/cancel/").status_code == 403  # no CSRF token
    workflow.refresh_from_db()
    assert workflow.status == "running"
