"""Job arrays through the API and services: N tasks with JOB_ARRAY_INDEX, at most P of
them candidates at once (the rest held), each end releasing the next in its own
transaction, parallelism changed while it runs, failed-only retry, cancel of them all."""

import pytest
from django.db import IntegrityError, transaction

from jobs.models import HELD_REASONS, Job, JobStatus, PendingReason
from jobs.scheduling.cycle import place_pending_jobs
from jobs.services.executions import execution_claim, execution_finish
from nodes.models import Node
from tests.jobs.making import submit

pytestmark = pytest.mark.django_db

HELD = PendingReason.WAITING_ARRAY_SLOT


@pytest.fixture
def big_node(db):
    return Node.objects.create(name="big", cpu_millis=64000, memory_mb=65536)


def tasks(array_id) -> list[Job]:
    return list(Job.objects.filter(array_parent_id=array_id).order_by("array_index"))


def run_placed(node) -> dict[int, str]:
    """Place what the cycle will and claim it; array index -> token."""
    placed = {}
    for token in place_pending_jobs(batch_size=100).tokens:
        execution = execution_claim(token=token, node_id=node.id)
        placed[Job.objects.get(pk=execution.job_id).array_index] = token
    return placed


def test_an_array_makes_its_tasks_and_holds_those_past_its_parallelism(api, big_node):
    array_id = submit(api, name="sweep", array={"count": 6, "parallelism": 2})
    array = Job.objects.get(pk=array_id)
    assert (array.status, array.array_count, array.array_parallelism) == ("running", 6, 2)
    made = tasks(array_id)
    assert [t.array_index for t in made] == list(range(6))
    assert [t.env["JOB_ARRAY_INDEX"] for t in made] == [str(i) for i in range(6)]
    assert [t.name for t in made] == [f"sweep[{i}]" for i in range(6)]
    assert [t.pending_reason for t in made] == ["", ""] + [HELD] * 4
    assert HELD in HELD_REASONS

    assert sorted(run_placed(big_node)) == [0, 1]  # the array job itself is never placed
    body = api.get(f"/api/jobs/{array_id}/").json()
    assert body["array"] == {"count": 6, "parallelism": 2}
    assert body["array_tasks"]["running"] == 2 and body["array_tasks"]["pending"] == 4
    assert api.get(f"/api/jobs/{made[3].id}/").json()["array_parent"] == array_id


def test_each_end_releases_the_next_task_and_the_last_ends_the_array(api, big_node):
    array_id = submit(api, array={"count": 3, "parallelism": 1})
    for index in range(3):
        placed = run_placed(big_node)
        assert list(placed) == [index]
        assert execution_finish(token=placed[index], exit_code=0 if index != 1 else 3)
    assert [t.status for t in tasks(array_id)] == ["succeeded", "failed", "succeeded"]
    array = Job.objects.get(pk=array_id)
    assert array.status == JobStatus.FAILED and array.finished_at is not None


def test_raising_parallelism_releases_more_at_once_and_lowering_holds_back(api, big_node):
    array_id = submit(api, array={"count": 8, "parallelism": 2})
    running = run_placed(big_node)
    response = api.patch(f"/api/jobs/{array_id}/parallelism/", {"parallelism": 5}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["array"]["parallelism"] == 5
    running |= run_placed(big_node)
    assert sorted(running) == [0, 1, 2, 3, 4]
    assert api.post(f"/api/jobs/{array_id}/parallelism/", {"parallelism": 1}).status_code == 200
    execution_finish(token=running[0], exit_code=0)
    assert run_placed(big_node) == {}  # four still run, over the new parallelism of one
    bad = api.patch(f"/api/jobs/{array_id}/parallelism/", {"parallelism": 0}, format="json")
    assert bad.status_code == 400 and "parallelism" in bad.json()


def test_failed_only_retry_reruns_exactly_the_failed_tasks(api, big_node):
    array_id = submit(api, array={"count": 4, "parallelism": 4})
    placed = run_placed(big_node)
    for index, token in placed.items():
        execution_finish(token=token, exit_code=1 if index in (1, 2) else 0)
    assert Job.objects.get(pk=array_id).status == JobStatus.FAILED

    response = api.post(f"/api/jobs/{array_id}/retry/?failed_only=true")
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "running"
    again = run_placed(big_node)
    assert sorted(again) == [1, 2]
    assert {Job.objects.get(array_parent_id=array_id, array_index=i).attempts for i in again} == {2}
    for token in again.values():
        execution_finish(token=token, exit_code=0)
    assert Job.objects.get(pk=array_id).status == JobStatus.SUCCEEDED
    plain = submit(api)
    assert api.post(f"/api/jobs/{plain}/retry/?failed_only=true").status_code == 400


def test_cancel_cancels_every_task_and_the_array(api, big_node):
    array_id = submit(api, array={"count": 5, "parallelism": 2})
    running = run_placed(big_node)
    response = api.post(f"/api/jobs/{array_id}/cancel/")
    assert response.status_code == 200
    statuses = {
        t.array_index: (t.status, t.cancel_requested_at is not None) for t in tasks(array_id)
    }
    assert statuses[0] == statuses[1] == ("running", True)  # their nodes kill them
    assert {statuses[i][0] for i in (2, 3, 4)} == {"cancelled"}
    assert Job.objects.get(pk=array_id).status == JobStatus.RUNNING
    for token in running.values():
        execution_finish(token=token, exit_code=None, cancelled=True)
    assert Job.objects.get(pk=array_id).status == JobStatus.CANCELLED
    assert run_placed(big_node) == {}


@pytest.mark.parametrize(
    "array",
    [{"count": 0}, {"count": 10_001}, {"count": 3, "parallelism": 0}, {"count": 2, "size": 1}, 5],
)
def test_a_bad_array_is_a_400_on_array_and_nothing_is_created(api, big_node, array):
    response = api.post(
        "/api/jobs/", {"name": "a", "command": ["true"], "array": array}, format="json"
    )
    assert response.status_code == 400
    assert "array" in response.json()
    assert not Job.objects.exists()


def test_the_database_refuses_a_held_job_that_is_no_task(team, default_queue):
    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.create(
            team=team, queue=default_queue, name="x", command=["true"], pending_reason=HELD
        )


def test_a_definition_submits_an_array(api, big_node):
    definition = api.post(
        "/api/definitions/", {"name": "sweep", "command": ["true"]}, format="json"
    ).json()
    response = api.post(
        f"/api/definitions/{definition['id']}/submit/",
        {"array": {"count": 3, "parallelism": 2}},
        format="json",
    )
    assert response.status_code == 201, response.json()
    array_id = response.json()["id"]
    assert [t.definition_id for t in tasks(array_id)] == [definition["id"]] * 3
    assert [t.pending_reason for t in tasks(array_id)] == ["", "", HELD]


def test_an_array_leaves_room_in_the_env_for_its_index(api, big_node):
    env = {f"V{i}": "x" for i in range(128)}
    response = api.post(
        "/api/jobs/",
        {"name": "a", "command": ["true"], "env": env, "array": {"count": 2}},
        format="json",
    )
    assert response.status_code == 400 and "env" in response.json()
    assert not Job.objects.exists()
