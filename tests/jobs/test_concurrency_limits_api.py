"""/api/concurrency-limits/: a team's limits, changed by its admins and members, read by
its viewers, invisible to other teams; `concurrency_key` on jobs and definitions."""

import pytest

from accounts.models import Role, User
from accounts.services import team_add_member
from jobs.models import ConcurrencyLimit, Job, JobStatus, PendingReason
from jobs.scheduling.cycle import place_pending_jobs
from nodes.models import Node
from tests.conftest import token_client
from tests.jobs.making import ECHO, submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def viewer_api(team):
    user = User.objects.create_user("victor", password="correct horse battery")
    team_add_member(team=team, user=user, role=Role.VIEWER)
    return token_client(user)


def create(api, **fields):
    return api.post(
        "/api/concurrency-limits/", {"team": "blue", "key": "db", "max_running": 2, **fields}
    )


def test_it_creates_lists_changes_and_deletes_a_limit(api):
    response = create(api)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["team"], body["key"], body["max_running"]) == ("blue", "db", 2)
    assert api.get("/api/concurrency-limits/").json()["count"] == 1
    url = f"/api/concurrency-limits/{body['id']}/"
    assert api.patch(url, {"max_running": 5}).json()["max_running"] == 5
    assert ConcurrencyLimit.objects.get().max_running == 5
    assert api.delete(url).status_code == 204
    assert not ConcurrencyLimit.objects.exists()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"max_running": -1}, "max_running"),
        ({"max_running": "many"}, "max_running"),
        ({"key": ""}, "key"),
        ({"key": "has space"}, "key"),
        ({"key": "x" * 101}, "key"),
        ({"team": "nobody"}, "team"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_nothing_is_created(api, fields, field):
    response = create(api, **fields)
    assert response.status_code == 400
    assert field in response.json()
    assert not ConcurrencyLimit.objects.exists()


def test_a_key_the_team_already_limits_is_a_400_on_key(api):
    assert create(api).status_code == 201
    response = create(api, max_running=4)
    assert response.status_code == 400
    assert "key" in response.json()
    assert ConcurrencyLimit.objects.get().max_running == 2


def test_viewers_read_but_may_not_change(api, viewer_api):
    pk = create(api).json()["id"]
    assert viewer_api.get(f"/api/concurrency-limits/{pk}/").status_code == 200
    assert create(viewer_api, key="other").status_code == 403
    assert viewer_api.patch(f"/api/concurrency-limits/{pk}/", {"max_running": 9}).status_code == 403
    assert viewer_api.delete(f"/api/concurrency-limits/{pk}/").status_code == 403
    assert ConcurrencyLimit.objects.get().max_running == 2


def test_another_teams_limit_is_a_404(api, outsider_api):
    pk = create(api).json()["id"]
    assert outsider_api.get(f"/api/concurrency-limits/{pk}/").status_code == 404
    assert outsider_api.delete(f"/api/concurrency-limits/{pk}/").status_code == 404
    assert outsider_api.get("/api/concurrency-limits/").json()["count"] == 0


def test_a_job_and_a_definition_carry_their_concurrency_key(api, small_node):
    job_id = submit(api, concurrency_key="db")
    assert api.get(f"/api/jobs/{job_id}/").json()["concurrency_key"] == "db"
    definition = api.post(
        "/api/definitions/", {**ECHO, "concurrency_key": "nightly"}, format="json"
    ).json()
    assert definition["concurrency_key"] == "nightly"
    made = api.post(f"/api/definitions/{definition['id']}/submit/", {}, format="json").json()
    assert made["concurrency_key"] == "nightly"
    bad = api.post("/api/jobs/", {**ECHO, "concurrency_key": "a b"}, format="json")
    assert bad.status_code == 400 and "concurrency_key" in bad.json()


def test_why_names_the_limit_a_job_waits_for(api, team):
    Node.objects.create(name="big", cpu_millis=8000, memory_mb=8192)
    assert create(api, max_running=1).status_code == 201
    first, second = submit(api, concurrency_key="db"), submit(api, concurrency_key="db")
    place_pending_jobs(batch_size=10)
    assert Job.objects.get(pk=first).status == JobStatus.RESERVED
    why = api.get(f"/api/jobs/{second}/why/").json()
    assert why["reason"] == PendingReason.CONCURRENCY_LIMIT
    assert "'db' allows 1 at once and 1 of its jobs hold a slot" in why["summary"]
