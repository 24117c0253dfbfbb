"""Jobs made for tests: through the API, straight in the database, and placed and
claimed as a node would."""

from jobs.models import Job
from jobs.scheduling.cycle import place_pending_jobs
from jobs.services.executions import execution_claim
from resources.models import DEFAULT_QUEUE_NAME, Queue


def make_jobs(team, count, **spec):
    spec = {"name": "j", "command": ["true"], "cpu_millis": 1000, "memory_mb": 100, **spec}
    spec.setdefault("queue", Queue.objects.get(name=DEFAULT_QUEUE_NAME))
    return Job.objects.bulk_create([Job(team=team, **spec) for _ in range(count)])


def start_running(node) -> dict[int, str]:
    """Place what fits and claim it all, as the node would; returns job id -> token."""
    tokens = place_pending_jobs(batch_size=100).tokens
    for token in tokens:
        assert execution_claim(token=token, node_id=node.id) is not None
    return {Job.objects.get(last_execution__token=t).id: t for t in tokens}


ECHO = {"name": "hello", "command": ["echo", "hello"]}


def submit(api, **extra) -> int:
    """A job submitted through the API (an `echo hello` unless `extra` says otherwise)."""
    response = api.post("/api/jobs/", {**ECHO, **extra}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()["id"]
