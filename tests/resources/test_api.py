"""/api/queues/, /api/allocations/ and /api/resources/usage/: figures, tenancy, staff writes."""

import pytest

from jobs.models import ExecutionStatus, Job, JobStatus, PendingReason
from jobs.scheduling.cycle import place_pending_jobs
from jobs.services.executions import execution_claim
from nodes.models import Node, NodeStatus
from resources.models import DEFAULT_QUEUE_NAME, Allocation, AllocationStatus, Queue

pytestmark = pytest.mark.django_db


def submit(team, count=1, queue=DEFAULT_QUEUE_NAME, **spec):
    spec = {"name": "j", "command": ["true"], "cpu_millis": 1000, "memory_mb": 100, **spec}
    queue = Queue.objects.get(name=queue)
    return Job.objects.bulk_create([Job(team=team, queue=queue, **spec) for _ in range(count)])


@pytest.fixture
def cluster_state(team, other_team):
    """Two ready nodes and a cordoned one; blue holds 3 CPU in two queues, red 1 CPU."""
    Node.objects.create(name="node-a", cpu_millis=4000, memory_mb=8192)
    Node.objects.create(name="node-b", cpu_millis=4000, memory_mb=8192, gpu=1)
    Node.objects.create(name="node-c", cpu_millis=2000, memory_mb=1024, status=NodeStatus.CORDONED)
    batch = Queue.objects.create(name="batch", weight=2, quota_cpu_millis=6000)
    batch.teams.add(team)
    Queue.objects.create(name="red-only").teams.add(other_team)
    submit(team, 2, queue="batch")
    submit(team, 1, memory_mb=1000)
    submit(other_team, 1, queue="red-only", gpu=1)
    assert place_pending_jobs(batch_size=10).placed == 4


# --- Queues ----------------------------------------------------------------------------


def test_members_list_the_queues_their_teams_may_use(api, team, other_team, cluster_state):
    body = api.get("/api/queues/").json()
    assert [q["name"] for q in body["results"]] == ["batch", "default"]
    batch = body["results"][0]
    assert batch == {
        **batch,
        "all_teams": False,
        "teams": ["blue"],
        "weight": 2,
        "priority": 0,
        "strategy": "binpack",
        "quota": {"cpu": 6.0, "memory_mb": None, "gpu": None},
    }
    assert api.get("/api/queues/red-only/").status_code == 404


def test_members_see_only_their_own_teams_in_a_shared_queue(api, staff_api, team, other_team):
    shared = Queue.objects.create(name="shared")
    shared.teams.add(team, other_team)
    assert api.get("/api/queues/shared/").json()["teams"] == ["blue"]
    assert staff_api.get("/api/queues/shared/").json()["teams"] == ["blue", "red"]


def test_staff_create_change_and_delete_a_queue(staff_api, team, other_team):
    response = staff_api.post(
        "/api/queues/",
        {
            "name": "gpu",
            "teams": ["blue", "red"],
            "weight": 3,
            "priority": 5,
            "strategy": "spread",
            "quota": {"cpu": "2.5", "gpu": 2},
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["quota"] == {"cpu": 2.5, "memory_mb": None, "gpu": 2}
    queue = Queue.objects.get(name="gpu")
    assert (queue.quota_cpu_millis, queue.quota_gpu, queue.strategy) == (2500, 2, "spread")
    assert set(queue.teams.values_list("slug", flat=True)) == {"blue", "red"}

    response = staff_api.patch("/api/queues/gpu/", {"weight": 1, "teams": ["red"]}, format="json")
    assert response.status_code == 200, response.json()
    queue.refresh_from_db()
    assert (queue.weight, queue.priority, queue.quota_cpu_millis) == (1, 5, 2500)
    assert list(queue.teams.values_list("slug", flat=True)) == ["red"]

    response = staff_api.patch("/api/queues/gpu/", {"quota": {"cpu": None}}, format="json")
    assert response.json()["quota"] == {"cpu": None, "memory_mb": None, "gpu": None}

    assert staff_api.delete("/api/queues/gpu/").status_code == 204
    assert not Queue.objects.filter(name="gpu").exists()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "default"}, "name"),
        ({"name": "Not A Slug"}, "name"),
        ({"name": "q", "weight": 0}, "weight"),
        ({"name": "q", "weight": 1001}, "weight"),
        ({"name": "q", "teams": ["nobody"]}, "teams"),
        ({"name": "q", "all_teams": True, "teams": ["blue"]}, "teams"),
        ({"name": "q", "strategy": "random"}, "strategy"),
        ({"name": "q", "quota": {"cpu": -1}}, "quota"),
        ({"name": "q", "quota": {"cpus": 1}}, "quota"),
        ({"name": "q", "colour": "red"}, "colour"),
        ({"name": "q", "preemption_grace_seconds": -1}, "preemption_grace_seconds"),
        ({"name": "q", "preemption_grace_seconds": "soon"}, "preemption_grace_seconds"),
        ({"name": "q", "preemptible_default": "maybe"}, "preemptible_default"),
    ],
)
def test_bad_queue_input_is_a_400_naming_the_field(staff_api, team, payload, field):
    response = staff_api.post("/api/queues/", payload, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert not Queue.objects.filter(name="q").exists()


def test_members_may_not_create_change_or_delete_queues(api, team):
    assert api.post("/api/queues/", {"name": "mine"}, format="json").status_code == 403
    assert api.patch("/api/queues/default/", {"weight": 9}, format="json").status_code == 403
    assert api.delete("/api/queues/default/").status_code == 403
    assert Queue.objects.get(name="default").weight == 1


def test_the_default_queue_and_queues_with_jobs_are_not_deleted(staff_api, team):
    Queue.objects.create(name="used", all_teams=True)
    submit(team, 1, queue="used")
    for name in ("default", "used"):
        response = staff_api.delete(f"/api/queues/{name}/")
        assert response.status_code == 400
        assert "cannot be deleted" in response.json()["non_field_errors"][0]
    response = staff_api.patch("/api/queues/default/", {"name": "other"}, format="json")
    assert response.status_code == 400
    assert set(Queue.objects.values_list("name", flat=True)) == {"default", "used"}


def test_the_queue_list_has_a_fixed_number_of_queries(api, team, django_assert_max_num_queries):
    for i in range(15):
        Queue.objects.create(name=f"q{i}").teams.add(team)
    # Authentication (1, plus at most 1 last-used update), my teams, count, page, teams.
    with django_assert_max_num_queries(6):
        response = api.get("/api/queues/")
    assert response.json()["count"] == 16


# --- Allocations -----------------------------------------------------------------------


def test_members_see_their_teams_allocations_and_staff_see_all(
    api, outsider_api, staff_api, cluster_state
):
    mine = api.get("/api/allocations/").json()
    assert mine["count"] == 3
    assert {a["team"] for a in mine["results"]} == {"blue"}
    first = mine["results"][0]
    assert set(first) == {
        "id",
        "job",
        "attempt",
        "token",
        "execution_status",
        "node",
        "team",
        "queue",
        "resources",
        "status",
        "created_at",
        "activated_at",
        "released_at",
    }
    assert first["status"] == "reserved" and first["attempt"] == 1
    theirs = outsider_api.get("/api/allocations/").json()
    assert theirs["count"] == 1
    assert theirs["results"][0]["resources"] == {"cpu": 1.0, "memory_mb": 100, "gpu": 1}
    assert outsider_api.get(f"/api/allocations/{first['id']}/").status_code == 404
    assert staff_api.get("/api/allocations/").json()["count"] == 4


def test_allocations_filter_by_node_status_queue_team_and_job(api, staff_api, cluster_state):
    by_node = api.get("/api/allocations/", {"node": "node-a"}).json()["results"]
    assert {a["node"] for a in by_node} == {"node-a"}
    red = staff_api.get("/api/allocations/", {"team": "red"}).json()["results"]
    assert [a["team"] for a in red] == ["red"]
    assert api.get("/api/allocations/", {"team": "red"}).json()["count"] == 0  # not theirs
    assert api.get("/api/allocations/", {"queue": "batch"}).json()["count"] == 2
    assert api.get("/api/allocations/", {"status": "released"}).json()["count"] == 0
    assert api.get("/api/allocations/", {"status": "reserved"}).json()["count"] == 3
    assert api.get("/api/allocations/", {"status": "lost"}).status_code == 400
    job = Job.objects.filter(queue__name="batch").first()
    assert api.get("/api/allocations/", {"job": job.id}).json()["count"] == 1


def test_the_allocation_list_has_a_fixed_number_of_queries(
    api, cluster_state, django_assert_max_num_queries
):
    # Authentication (1, plus at most 1 last-used update), the caller's teams, count, page.
    with django_assert_max_num_queries(5):
        response = api.get("/api/allocations/")
    assert len(response.json()["results"]) == 3


def test_staff_release_a_stuck_allocation_exactly_once(staff_api, cluster_state):
    allocation = Allocation.objects.select_related("execution", "node").get(
        execution__job__team__slug="red"
    )
    execution = allocation.execution
    assert execution_claim(token=execution.token, node_id=allocation.node_id)
    node = allocation.node
    before = (node.allocated_cpu_millis, node.allocated_gpu)

    response = staff_api.post(f"/api/allocations/{allocation.pk}/release/")
    assert response.status_code == 200, response.json()
    assert (response.json()["status"], response.json()["execution_status"]) == (
        "released",
        "failed",
    )
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.FAILED
    assert execution.error == "allocation released by root: the execution was stuck"
    job = execution.job
    job.refresh_from_db()
    assert (job.status, job.finished_at is not None) == (JobStatus.FAILED, True)
    node.refresh_from_db()
    after = (node.allocated_cpu_millis, node.allocated_gpu)
    assert after == (before[0] - 1000, before[1] - 1)

    again = staff_api.post(f"/api/allocations/{allocation.pk}/release/")
    assert again.status_code == 400
    assert again.json() == {
        "non_field_errors": [f"Allocation {allocation.pk} is already released."]
    }
    node.refresh_from_db()
    assert (node.allocated_cpu_millis, node.allocated_gpu) == after


def test_a_released_job_with_retries_left_goes_back_to_pending(staff_api, team):
    Node.objects.create(name="node-a", cpu_millis=4000, memory_mb=8192)
    job = submit(team, 1, max_retries=2)[0]
    place_pending_jobs(batch_size=10)
    allocation = Allocation.objects.get(execution__job=job)  # never claimed: still reserved
    assert staff_api.post(f"/api/allocations/{allocation.pk}/release/").status_code == 200
    job.refresh_from_db()
    assert (job.status, job.pending_reason) == (JobStatus.PENDING, PendingReason.WAITING_RETRY)
    assert list(job.retries.values_list("attempt", "reason")) == [
        (2, "allocation released by root: the execution was stuck")
    ]
    allocation.refresh_from_db()
    assert allocation.status == AllocationStatus.RELEASED


def test_members_may_not_release_allocations(api, cluster_state):
    allocation = Allocation.objects.filter(execution__job__team__slug="blue").first()
    assert api.post(f"/api/allocations/{allocation.pk}/release/").status_code == 403
    allocation.refresh_from_db()
    assert allocation.status == AllocationStatus.RESERVED


# --- Usage -----------------------------------------------------------------------------


def figures(cpu, memory_mb, gpu):
    return {"cpu": cpu, "memory_mb": memory_mb, "gpu": gpu}


def test_usage_gives_capacity_allocated_and_free_at_every_level(api, cluster_state):
    body = api.get("/api/resources/usage/").json()
    assert body["cluster"] == {
        "nodes": 3,
        "capacity": figures(10.0, 17408, 1),
        "allocated": figures(4.0, 1300, 1),
        # free for new work: ready nodes only
        "free": figures(4.0, 15084, 0),
    }
    by_name = {n["name"]: n for n in body["nodes"]}
    assert by_name["node-c"] == {
        "name": "node-c",
        "status": "cordoned",
        "capacity": figures(2.0, 1024, 0),
        "allocated": figures(0.0, 0, 0),
        "free": figures(2.0, 1024, 0),
    }
    assert by_name["node-a"]["allocated"]["cpu"] + by_name["node-b"]["allocated"]["cpu"] == 4.0
    queues = {q["queue"]: q for q in body["queues"]}
    assert set(queues) == {"default", "batch"}  # not red-only
    assert queues["batch"]["capacity"] == figures(6.0, 17408, 1)
    assert queues["batch"]["allocated"] == figures(2.0, 200, 0)
    assert queues["batch"]["free"] == figures(4.0, 15084, 0)
    assert queues["batch"]["weight"] == 2
    assert queues["batch"]["dominant_share"] == 0.2
    assert queues["default"]["allocated"] == figures(1.0, 1000, 0)
    assert body["teams"] == [
        {
            "team": "blue",
            "fair_share_weight": 1,
            "past_share": 0,
            "capacity": figures(10.0, 17408, 1),
            "allocated": figures(3.0, 1200, 0),
            "free": figures(4.0, 15084, 0),
        }
    ]


def test_staff_see_every_team_and_queue_in_usage(staff_api, cluster_state):
    body = staff_api.get("/api/resources/usage/").json()
    assert [t["team"] for t in body["teams"]] == ["blue", "red"]
    assert {q["queue"] for q in body["queues"]} == {"batch", "default", "red-only"}
    red = next(t for t in body["teams"] if t["team"] == "red")
    assert red["allocated"] == figures(1.0, 100, 1)


def test_a_team_limited_to_quota_queues_reaches_only_their_quotas(api, team):
    Node.objects.create(name="node-a", cpu_millis=8000, memory_mb=8192)
    Queue.objects.filter(name=DEFAULT_QUEUE_NAME).update(all_teams=False)
    Queue.objects.create(name="small", quota_cpu_millis=1500, quota_memory_mb=512).teams.add(team)
    blue = api.get("/api/resources/usage/").json()["teams"][0]
    assert blue["capacity"] == figures(1.5, 512, 0)


def test_usage_has_a_fixed_number_of_queries(api, cluster_state, django_assert_max_num_queries):
    # Authentication (1, plus at most 1 last-used update), nodes, held by queue and team,
    # queues, their teams, visible queues, visible teams.
    with django_assert_max_num_queries(8):
        response = api.get("/api/resources/usage/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["cluster"]["allocated"] == figures(4.0, 1300, 1)
    assert [n["name"] for n in body["nodes"]] == ["node-a", "node-b", "node-c"]
    assert {q["queue"]: q["allocated"] for q in body["queues"]} == {
        "batch": figures(2.0, 200, 0),
        "default": figures(1.0, 1000, 0),
    }
    assert [(t["team"], t["allocated"]) for t in body["teams"]] == [("blue", figures(3.0, 1200, 0))]


def test_staff_set_a_queues_default_time_limit(staff_api, team):
    response = staff_api.post(
        "/api/queues/", {"name": "timed", "default_timeout_seconds": 3600}, format="json"
    )
    assert response.status_code == 201, response.json()
    assert response.json()["default_timeout_seconds"] == 3600
    response = staff_api.patch(
        "/api/queues/timed/", {"default_timeout_seconds": None}, format="json"
    )
    assert response.json()["default_timeout_seconds"] is None
    response = staff_api.patch("/api/queues/timed/", {"default_timeout_seconds": 0}, format="json")
    assert response.status_code == 400


def test_staff_make_a_queue_preemptible_with_its_own_grace(staff_api, team):
    response = staff_api.post(
        "/api/queues/",
        {"name": "scavenger", "preemptible_default": True, "preemption_grace_seconds": 10},
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["preemptible_default"], body["preemption_grace_seconds"]) == (True, 10)
    response = staff_api.patch(
        "/api/queues/scavenger/", {"preemption_grace_seconds": None}, format="json"
    )
    assert response.json()["preemption_grace_seconds"] is None
    queue = Queue.objects.get(name="scavenger")
    assert (queue.preemptible_default, queue.preemption_grace_seconds) == (True, None)
