"""The web UI in a real browser (Playwright driving Debian's chromium, headless), against
the web process as deployed and real scheduler and node-agent processes: a member runs
jobs from the pages and reads what they used, the why panel says what the API says, a
waiting job is held, released and changed from its page, viewers and other teams are
refused, a schedule is made, previewed, paused and resumed from its pages, and a
workflow's steps are read by level and it is cancelled and retried from its page."""

import os
import re
from pathlib import Path

import pytest
import requests

from accounts.models import Role, User
from accounts.services import team_add_member
from jobs.models import Job, JobDefinition, JobSchedule, JobStatus, Workflow
from jobs.services.workflows import workflow_create
from nodes.models import Node
from tests.jobs.making import submit
from tests.processes import free_port, wait_until

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "correct horse battery"
# Playwright's sync API keeps an event loop in the test's thread; the tests' own ORM
# reads there are plain synchronous calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (scripts/test installs it)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def web(cluster):
    """The web process (gunicorn, as scripts/up starts it); its base URL."""
    port = free_port()
    cluster.start_web(port)
    return f"http://127.0.0.1:{port}"


def log_in(browser, base: str, user) -> "object":
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(20_000)
    page.goto(f"{base}/login/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    return page


def fill_job_form(page, base: str, *, name: str, command: str, cpu: str = "1"):
    page.goto(f"{base}/jobs/new/")
    page.fill("input[name=name]", name)
    page.fill("input[name=command]", command)
    page.fill("input[name=cpu]", cpu)
    page.click("form.form button[type=submit]")


def job_id_of(page) -> int:
    return int(re.search(r"/jobs/(\d+)/$", page.url).group(1))


def test_a_member_runs_a_job_from_the_form_and_cancels_a_long_one(
    cluster, web, browser, api, member
):
    cluster.start_node("node-a", cpu=1)
    cluster.start_scheduler()
    # The node's one CPU is busy until the form's job has been seen waiting.
    blocker = submit(api, command=["sleep", "300"], resources={"cpu": 1})
    wait_until(
        lambda: Job.objects.get(pk=blocker).status == JobStatus.RUNNING, 30, message="blocker"
    )
    page = log_in(browser, web, member)

    fill_job_form(
        page, web, name="from-browser", command="sh -c 'echo hello-from-browser; sleep 3'"
    )
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    job_id = job_id_of(page)
    page.goto(f"{web}/jobs/")
    page.evaluate("window.notReloaded = true")
    status = page.locator(f'tr[data-job="{job_id}"] [data-status]')
    seen = []

    def watch():
        current = status.get_attribute("data-status")
        if not seen or seen[-1] != current:
            seen.append(current)
            if current == "pending":
                assert api.post(f"/api/jobs/{blocker}/cancel/").status_code == 200
        return current == "succeeded"

    wait_until(watch, 40, interval=0.1, message="the job succeeded on the list")
    assert seen == ["pending", "running", "succeeded"], seen
    assert page.evaluate("window.notReloaded") is True

    page.click(f'tr[data-job="{job_id}"] a')
    page.wait_for_url(f"{web}/jobs/{job_id}/")
    assert "hello-from-browser" in page.locator("#job-log").inner_text()

    fill_job_form(page, web, name="long-one", command="sleep 300")
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    long_id = job_id_of(page)
    page.wait_for_selector('#job-status[data-status="running"]')
    page.click("text=Cancel")
    page.wait_for_selector('#job-status[data-status="cancelled"]')
    assert Job.objects.get(pk=long_id).status == JobStatus.CANCELLED

    page.goto(f"{web}/")
    assert page.locator('tr[data-node="node-a"] .cpu-allocated').inner_text() == "0"
    assert Node.objects.get(name="node-a").allocated_cpu_millis == 0

    # The usage report: three attempts ended (the blocker and the long one cancelled),
    # one succeeded; then by day as well.
    page.goto(f"{web}/usage/")
    cells = page.locator("#usage tbody tr").first.locator("td").all_inner_texts()
    assert cells[:3] == ["blue", "3", "1"], cells
    page.check("input[name=by][value=day]")
    page.click("form.filters button[type=submit]")
    page.wait_for_url(re.compile(r"by=day"))
    assert page.locator("#usage thead th").all_inner_texts()[:3] == ["Team", "Day", "Attempts"]


def test_a_waiting_jobs_page_says_what_each_node_lacks_as_why_does(
    cluster, web, browser, api, member, team
):
    cluster.start_node("node-a", cpu=1)
    cluster.start_scheduler()
    busy = submit(api, command=["sleep", "300"], resources={"cpu": 1})
    wait_until(lambda: Job.objects.get(pk=busy).status == JobStatus.RUNNING, 30, message="busy")
    waiting = submit(api, command=["true"], resources={"cpu": 1}, name="waiting")
    wait_until(
        lambda: Job.objects.get(pk=waiting).pending_reason == "insufficient_capacity",
        30,
        message="the cycle's reason",
    )
    page = log_in(browser, web, member)
    page.goto(f"{web}/jobs/{waiting}/")

    session = {c["name"]: c["value"] for c in page.context.cookies()}
    why = requests.get(f"{web}/api/jobs/{waiting}/why/", cookies=session, timeout=10).json()
    assert why["reason"] == "insufficient_capacity"
    assert page.locator("#why-summary").inner_text() == why["summary"]
    rows = page.locator("#why-nodes tbody tr").all_inner_texts()
    assert [row.split("\t")[:3] for row in rows] == [
        [group["verdict"], group["detail"], str(group["count"])] for group in why["nodes"]
    ]
    assert "needs 1 CPU, 0 free" in rows[0]

    # Held from its page, it says so and waits; released, the scheduler weighs it again.
    page.click("button:text-is('Hold')")
    page.wait_for_selector("#why-summary:has-text('The job is held')")
    assert Job.objects.get(pk=waiting).pending_reason == "held"
    assert page.locator("button:text-is('Hold')").count() == 0
    page.click("button:text-is('Release')")
    page.wait_for_selector("button:text-is('Hold')")
    wait_until(
        lambda: Job.objects.get(pk=waiting).pending_reason == "insufficient_capacity",
        30,
        message="the cycle's reason again",
    )

    # Changed from its page: a request no node could hold is refused beside its field;
    # half a CPU and a higher priority are taken, and the timeline says who did what.
    page.click("a:text-is('Change')")
    page.wait_for_url(f"{web}/jobs/{waiting}/change/")
    page.fill("input[name=cpu]", "2")
    page.click("form.form button[type=submit]")
    assert page.locator('[data-field="cpu"]').inner_text() == (
        "Requests 2 CPU, but the largest node has 1 CPU."
    )
    page.fill("input[name=cpu]", "0.5")
    page.fill("input[name=priority]", "3")
    page.click("form.form button[type=submit]")
    page.wait_for_url(f"{web}/jobs/{waiting}/")
    page.wait_for_selector("td:text-is('changed by alice: priority 0 → 3; cpu 1 → 0.5')")
    job = Job.objects.get(pk=waiting)
    assert (job.cpu_millis, job.priority, job.status) == (500, 3, JobStatus.PENDING)


@pytest.fixture
def viewer(team):
    user = User.objects.create_user("vic", password=PASSWORD)
    team_add_member(team=team, user=user, role=Role.VIEWER)
    return user


def test_viewers_see_no_action_and_forged_posts_are_refused(
    live_server, browser, viewer, member, outsider, team, default_queue, small_node
):
    job = Job.objects.create(team=team, queue=default_queue, name="theirs", command=["true"])
    page = log_in(browser, live_server.url, viewer)
    page.goto(f"{live_server.url}/jobs/{job.pk}/")
    assert page.locator("text=theirs").count() >= 1
    assert page.locator("form[method=post] button", has_text="Cancel").count() == 0
    assert page.locator("text=Submit again").count() == 0
    page.goto(f"{live_server.url}/jobs/")
    assert page.locator("button", has_text="Requeue").count() == 0

    # A forged POST from the viewer's session, with its CSRF token: refused, no change.
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    answer = page.request.post(
        f"{live_server.url}/jobs/{job.pk}/cancel/",
        form={"csrfmiddlewaretoken": token},
        headers={"Referer": f"{live_server.url}/jobs/{job.pk}/"},
    )
    assert answer.status == 403
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING

    outsider_page = log_in(browser, live_server.url, outsider)
    assert outsider_page.goto(f"{live_server.url}/jobs/{job.pk}/").status == 404

    member_page = log_in(browser, live_server.url, member)
    for path in ("/jobs/", f"/jobs/{job.pk}/", "/jobs/new/", "/schedules/new/"):
        member_page.goto(f"{live_server.url}{path}")
        forms = member_page.locator("form[method=post]")
        assert forms.count() >= 1, path
        for index in range(forms.count()):
            assert forms.nth(index).locator("input[name=csrfmiddlewaretoken]").count() == 1, path


def test_a_schedule_from_the_form_previews_runs_and_pauses_and_resumes(
    live_server, browser, member, team, default_queue
):
    definition = JobDefinition.objects.create(
        team=team, queue=default_queue, name="nightly", command=["echo", "hi"]
    )
    page = log_in(browser, live_server.url, member)
    page.goto(f"{live_server.url}/schedules/new/")
    page.fill("input[name=name]", "weekday-mornings")
    page.select_option("select[name=definition]", str(definition.pk))
    page.fill("input[name=cron]", "61 * * * *")
    page.wait_for_selector("#cron-preview [data-preview-error]")
    page.click("form.form button[type=submit]")
    assert "not a valid cron" in page.locator('[data-field="cron"]').inner_text()
    assert not JobSchedule.objects.exists()

    page.fill("input[name=cron]", "30 7 * * 1-5")
    page.wait_for_function(
        "document.querySelectorAll('#cron-preview #preview-runs li').length === 5"
    )
    page.click("form.form button[type=submit]")
    page.wait_for_url(re.compile(r"/schedules/\d+/$"))
    assert page.locator("#next-runs li").count() == 5
    schedule = JobSchedule.objects.get()

    page.click("button:has-text('Pause')")
    page.wait_for_selector("#schedule-state:has-text('paused')")
    schedule.refresh_from_db()
    assert not schedule.enabled
    page.click("button:has-text('Resume')")
    page.wait_for_selector("#schedule-state:has-text('active')")
    schedule.refresh_from_db()
    assert schedule.enabled


def test_a_workflows_steps_are_read_by_level_and_it_is_cancelled_and_retried(
    live_server, browser, member, team, default_queue, small_node
):
    spec = {"command": ["true"], "cpu_millis": 100, "memory_mb": 64, "gpu": 0}
    workflow = workflow_create(
        team=team,
        name="diamond",
        steps=[
            {"name": "bottom", "job": spec, "depends_on": ["left", "right"]},
            {"name": "left", "job": spec, "depends_on": ["top"]},
            {"name": "right", "job": spec, "depends_on": ["top"]},
            {"name": "top", "job": spec},
        ],
    )
    page = log_in(browser, live_server.url, member)
    page.click("header a:has-text('Workflows')")
    page.click("#workflows a:has-text('diamond')")
    page.wait_for_url(f"{live_server.url}/workflows/{workflow.pk}/")
    cells = page.locator("#steps tbody tr td:nth-child(2)").all_inner_texts()
    levels = page.locator("#steps tbody tr td:nth-child(1)").all_inner_texts()
    assert list(zip(levels, cells, strict=True)) == [
        ("0", "top"), ("1", "left"), ("1", "right"), ("2", "bottom")
    ]  # fmt: skip
    assert page.inner_text("#step-states") == "4 pending"

    page.click("#steps tbody tr:nth-child(2) td:nth-child(3) a")
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    assert page.inner_text("#job-workflow") == "diamond"
    page.click("#job-workflow")
    page.click("button:has-text('Cancel')")
    page.wait_for_selector("#workflow-state:has-text('cancelled')")
    assert page.inner_text("#step-states") == "4 cancelled"
    page.click("button:has-text('Retry failed steps')")
    page.wait_for_selector("#workflow-state:has-text('running')")
    assert Workflow.objects.get().status == "running"
    assert set(Job.objects.values_list("status", flat=True)) == {JobStatus.PENDING}
    # While it runs, the page follows its steps without a reload.
    Job.objects.filter(workflow_step__name="top").update(status=JobStatus.RUNNING)
    page.wait_for_selector("#step-states:has-text('3 pending, 1 running')")
