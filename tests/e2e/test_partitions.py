"""Partitions, with each node agent on a host of its own (a network namespace, tests/netns.py)
and the control plane on the host: a node cut off completely, one that reaches the broker
but not the API, one that reaches the API but not the broker, and links that lose and
delay packets. README's "Partitions" says what each leads to; these tests hold it."""

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from events.models import Event, EventType
from jobs.models import ExecutionStatus, Job, JobExecution, JobStatus
from nodes.models import Node, NodeStatus
from nodes.services import node_cordon, node_uncordon
from tests.netns import (
    LinkBroker,
    LinkDelay,
    NetnsRig,
    free_port_on,
    namespaces_unavailable,
    sweep_leftovers,
)
from tests.processes import Cluster, Process, wait_until

pytestmark = pytest.mark.e2e

NODES = ("node-a", "node-b", "node-c")


@pytest.fixture(scope="module")
def rig():
    unavailable = namespaces_unavailable()
    if unavailable:
        pytest.skip(f"the partition tests need network namespaces: {unavailable}")
    sweep_leftovers()
    rig = NetnsRig(len(NODES))
    yield rig
    rig.close()


@pytest.fixture(scope="module")
def link_broker(rig, tmp_path_factory):
    broker = LinkBroker(rig.host_addresses, tmp_path_factory.mktemp("link-broker") / "redis.log")
    yield broker
    broker.close()


@dataclass
class Hosts:
    """The cluster with its node agents on hosts of their own."""

    rig: NetnsRig
    broker: LinkBroker
    cluster: Cluster
    tmp_path: Path
    relays: list[LinkDelay] = field(default_factory=list)

    def link(self, name: str):
        return self.rig.links[NODES.index(name)]

    def start_node(self, name: str, *, cpu: float = 1, slots: int = 1, delay: float = 0):
        """The agent of `name` in its namespace, reaching the API and the broker through
        its link only (through a delay relay on the host end each, with `delay`)."""
        link = self.link(name)
        api_port, broker_port = self.cluster.start_api(), self.broker.port
        if delay:
            api_port, broker_port = (
                self.delayed(link, port, delay) for port in (api_port, broker_port)
            )
        broker_url = f"redis://{link.host_address}:{broker_port}"
        process = self.cluster.start_node(
            name,
            cpu=cpu,
            slots=slots,
            wait=False,
            argv_prefix=link.netns_argv([]),
            env={
                "SCHEDULER_API_URL": f"http://{link.host_address}:{api_port}",
                "CELERY_BROKER_URL": f"{broker_url}/0",
                "CACHE_URL": f"{broker_url}/1",
            },
        )
        self.wait_ready(name, process)
        return process

    def delayed(self, link, port: int, delay: float) -> int:
        """A port on the host end of `link` that relays to `port` with `delay`."""
        relay = LinkDelay(
            listen=link.host_address,
            target_port=port,
            delay=delay,
            log_path=self.tmp_path / f"delay-{link.netns}-{port}.log",
        )
        self.relays.append(relay)
        return relay.port

    def wait_ready(self, name: str, process: Process) -> None:
        """Registered, and its worker consumes its queue (Celery logs `NAME@HOST ready.`;
        a ping from the host would need this process's Celery app on the links' broker)."""

        def ready():
            if not process.alive:
                raise AssertionError(f"node agent {name} exited:\n{process.log()[-3000:]}")
            worker_ready = f"{name}@{socket.gethostname()} ready." in process.log()
            return worker_ready and Node.objects.filter(name=name).exists()

        wait_until(ready, 60, interval=0.3, message=f"node agent {name}")


@pytest.fixture
def hosts(rig, link_broker, cluster, tmp_path):
    link_broker.flush()
    cluster.use_broker(link_broker.url())
    cluster.api_hosts = ["127.0.0.1", *rig.host_addresses]
    cluster.api_port = free_port_on(rig.host_addresses)
    cluster.env["ALLOWED_HOSTS"] = ",".join(["localhost", *cluster.api_hosts])
    hosts = Hosts(rig, link_broker, cluster, tmp_path)
    yield hosts
    rig.heal_all()
    cluster.stop_all()
    for relay in hosts.relays:
        relay.close()


def status_of(name: str) -> str:
    return Node.objects.get(name=name).status


def submit(api, command: str, **spec) -> int:
    response = api.post(
        "/api/jobs/",
        {"name": "partitioned", "command": ["sh", "-c", command], **spec},
        format="json",
    )
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def submit_marked(api, marker: Path) -> int:
    """A job that writes `start <attempt> <node>` and, when it ends, `done <attempt>` to
    `marker` (on the host side: namespaces share the file system). Its first attempt runs
    for 60 s, long enough to be still running when a partition heals; the next for 1 s."""
    return submit(
        api,
        f'echo "start $JOB_ATTEMPT $NODE_NAME" >> {marker}; '
        f'if [ "$JOB_ATTEMPT" = 1 ]; then sleep 60; else sleep 1; fi; '
        f'echo "done $JOB_ATTEMPT" >> {marker}',
    )


def processes_of(token: str) -> list[int]:
    """The processes running for the execution `token`, on any host of this machine."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if f"JOB_TOKEN={token}".encode() in environ:
            found.append(int(entry))
    return found


def started_on(marker: Path, line: str) -> bool:
    return marker.exists() and line in marker.read_text().splitlines()


def job_snapshot(job_id: int) -> tuple:
    job = Job.objects.get(pk=job_id)
    executions = list(
        JobExecution.objects.filter(job_id=job_id)
        .order_by("attempt")
        .values_list("attempt", "node__name", "status", "finished_at")
    )
    return job.status, job.attempts, job.finished_at, executions


def test_a_cut_off_node_is_failed_over_and_comes_back_without_running_anything_twice(
    hosts, api, tmp_path
):
    marker, early = tmp_path / "runs.txt", tmp_path / "early.txt"
    agent_a = hosts.start_node("node-a", cpu=2, slots=2)
    hosts.start_node("node-b")
    hosts.start_node("node-c")
    node_cordon(name="node-b")
    node_cordon(name="node-c")  # stays cordoned across its loss
    hosts.cluster.start_scheduler()
    job_id = submit_marked(api, marker)
    # Its first attempt ends while node-a is cut off: its success waits in the agent.
    early_id = submit(
        api,
        f'echo "start $JOB_ATTEMPT" >> {early}; sleep 2; echo "done $JOB_ATTEMPT" >> {early}',
    )
    wait_until(lambda: started_on(marker, "start 1 node-a"), 30, message="attempt 1 on node-a")
    wait_until(lambda: started_on(early, "start 1"), 30, message="the early job on node-a")
    node_uncordon(name="node-b")

    hosts.link("node-a").cut()
    hosts.link("node-c").cut()

    wait_until(
        lambda: Job.objects.get(pk=job_id).status == JobStatus.SUCCEEDED,
        60,
        message="the job to succeed elsewhere",
    )
    assert (status_of("node-a"), status_of("node-c")) == (NodeStatus.OFFLINE, NodeStatus.OFFLINE)
    wait_until(
        lambda: Job.objects.get(pk=early_id).status == JobStatus.SUCCEEDED,
        60,
        message="the early job to succeed elsewhere",
    )
    early_succeeded = job_snapshot(early_id)
    assert [(attempt, node) for attempt, node, _, _ in early_succeeded[3]] == [
        (1, "node-a"),
        (2, "node-b"),
    ]
    succeeded = job_snapshot(job_id)
    assert succeeded[:2] == (JobStatus.SUCCEEDED, 2)
    assert [(attempt, node, status) for attempt, node, status, _ in succeeded[3]] == [
        (1, "node-a", ExecutionStatus.LOST),
        (2, "node-b", ExecutionStatus.SUCCEEDED),
    ]
    first_token = f"job-{job_id}-attempt-1"
    # Cut off, node-a could not be told: its attempt runs on.
    assert processes_of(first_token)

    hosts.link("node-a").heal()
    hosts.link("node-c").heal()

    wait_until(
        lambda: (
            (status_of("node-a"), status_of("node-c")) == (NodeStatus.READY, NodeStatus.CORDONED)
        ),
        90,
        message="node-a back ready and node-c back cordoned",
    )
    # node-a learns that its attempt was taken away, and stops it.
    wait_until(lambda: not processes_of(first_token), 60, message="attempt 1 to be stopped")
    wait_until(
        lambda: "execution taken away: not reported" in agent_a.log(),
        30,
        message="node-a to drop the taken-away attempt",
    )
    # The early job's success, sent once the link was back, was answered and ignored.
    wait_until(
        lambda: Node.objects.get(name="node-a").running_tokens == [],
        60,
        message="node-a to have reported all it held",
    )
    assert job_snapshot(job_id) == succeeded
    assert job_snapshot(early_id) == early_succeeded
    lines = marker.read_text().splitlines()
    assert lines == ["start 1 node-a", "start 2 node-b", "done 2"]
    # Cut off, node-a could not know: the early job's first attempt ran to its end.
    assert early.read_text().splitlines() == ["start 1", "done 1", "start 2", "done 2"]
    back = Event.objects.filter(type=EventType.NODE_BACK).values_list("data", flat=True)
    assert sorted(back, key=lambda d: d["node"]) == [
        {"node": "node-a", "status": NodeStatus.READY},
        {"node": "node-c", "status": NodeStatus.CORDONED},
    ]
    # Both agents stayed up throughout and work again: node-a takes a new job.
    node_cordon(name="node-b")
    again = submit(api, "true")
    wait_until(
        lambda: Job.objects.get(pk=again).status == JobStatus.SUCCEEDED,
        30,
        message="a new job on node-a",
    )
    assert JobExecution.objects.get(job_id=again).node.name == "node-a"


def start_on_node_a(hosts, api, marker) -> tuple[Process, int]:
    """node-a running attempt 1 of a marked job, node-b ready beside it; the agent of
    node-a and the job's id."""
    agent_a = hosts.start_node("node-a")
    hosts.start_node("node-b")
    node_cordon(name="node-b")
    hosts.cluster.start_scheduler()
    job_id = submit_marked(api, marker)
    wait_until(lambda: started_on(marker, "start 1 node-a"), 30, message="attempt 1 on node-a")
    node_uncordon(name="node-b")
    return agent_a, job_id


def assert_failed_over_to_node_b(job_id) -> tuple:
    wait_until(
        lambda: Job.objects.get(pk=job_id).status == JobStatus.SUCCEEDED,
        60,
        message="the job to succeed on node-b",
    )
    succeeded = job_snapshot(job_id)
    assert succeeded[:2] == (JobStatus.SUCCEEDED, 2)
    assert [(attempt, node, status) for attempt, node, status, _ in succeeded[3]] == [
        (1, "node-a", ExecutionStatus.LOST),
        (2, "node-b", ExecutionStatus.SUCCEEDED),
    ]
    return succeeded


def test_a_node_that_reaches_the_broker_but_not_the_api_is_failed_over_as_a_lost_one(
    hosts, api, tmp_path
):
    marker = tmp_path / "runs.txt"
    agent_a, job_id = start_on_node_a(hosts, api, marker)

    hosts.link("node-a").cut_port(hosts.cluster.api_port)

    succeeded = assert_failed_over_to_node_b(job_id)
    assert status_of("node-a") == NodeStatus.OFFLINE
    first_token = f"job-{job_id}-attempt-1"
    assert processes_of(first_token)  # it cannot be told yet

    hosts.link("node-a").heal()

    wait_until(lambda: status_of("node-a") == NodeStatus.READY, 90, message="node-a back")
    wait_until(lambda: not processes_of(first_token), 60, message="attempt 1 to be stopped")
    assert job_snapshot(job_id) == succeeded
    assert marker.read_text().splitlines() == ["start 1 node-a", "start 2 node-b", "done 2"]
    node_events = list(
        Event.objects.filter(type__startswith="node.", data__node="node-a")
        .order_by("at", "id")
        .values_list("type", flat=True)
    )
    assert node_events[-2:] == [EventType.NODE_OFFLINE, EventType.NODE_BACK]
    assert EventType.NODE_BROKER_UNREACHABLE not in node_events
    assert "execution taken away: not reported" in agent_a.log()


def test_a_node_that_reaches_the_api_but_not_the_broker_goes_offline_and_stops_its_jobs(
    hosts, api, tmp_path
):
    marker = tmp_path / "runs.txt"
    agent_a, job_id = start_on_node_a(hosts, api, marker)

    hosts.link("node-a").cut_port(hosts.broker.port)

    succeeded = assert_failed_over_to_node_b(job_id)
    assert status_of("node-a") == NodeStatus.OFFLINE
    # It still reaches the API, so it learns at once that its attempt was taken away.
    first_token = f"job-{job_id}-attempt-1"
    wait_until(lambda: not processes_of(first_token), 30, message="attempt 1 to be stopped")
    # While it cannot reach the broker it stays offline, heartbeating all the same.
    later = Node.objects.get(name="node-a").last_heartbeat
    wait_until(
        lambda: Node.objects.get(name="node-a").running_tokens == [],
        30,
        message="node-a's heartbeats to say it runs nothing",
    )
    assert status_of("node-a") == NodeStatus.OFFLINE
    assert Node.objects.get(name="node-a").last_heartbeat == later

    hosts.link("node-a").heal()

    wait_until(lambda: status_of("node-a") == NodeStatus.READY, 90, message="node-a back")
    assert job_snapshot(job_id) == succeeded
    assert marker.read_text().splitlines() == ["start 1 node-a", "start 2 node-b", "done 2"]
    node_events = list(
        Event.objects.filter(type__startswith="node.", data__node="node-a")
        .order_by("at", "id")
        .values_list("type", flat=True)
    )
    assert node_events[-3:] == [
        EventType.NODE_BROKER_UNREACHABLE,
        EventType.NODE_OFFLINE,
        EventType.NODE_BACK,
    ]
    assert "execution taken away: not reported" in agent_a.log()
    # Back, it takes work through the broker again.
    node_cordon(name="node-b")
    again = submit(api, "true")
    wait_until(
        lambda: Job.objects.get(pk=again).status == JobStatus.SUCCEEDED,
        60,
        message="a new job on node-a",
    )


def test_200_jobs_succeed_over_lossy_slow_links_and_no_node_flaps(hosts, api):
    """5 % of each node's packets lost and 100 ms added each way to its streams."""
    for name in NODES:
        hosts.link(name).lose(0.05)
        hosts.start_node(name, cpu=1, slots=4, delay=0.1)
    hosts.cluster.start_scheduler()
    ids = [submit(api, "true", resources={"cpu": 0.25, "memory_mb": 16}) for _ in range(200)]
    wait_until(
        lambda: Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).count() == 200,
        600,
        interval=1,
        message="200 jobs to succeed",
    )
    assert set(Job.objects.filter(pk__in=ids).values_list("attempts", flat=True)) == {1}
    assert {n.status for n in Node.objects.all()} == {NodeStatus.READY}
    flaps = Event.objects.filter(
        type__in=(EventType.NODE_OFFLINE, EventType.NODE_BROKER_UNREACHABLE, EventType.NODE_BACK)
    )
    assert list(flaps.values_list("message", flat=True)) == []
    assert set(
        JobExecution.objects.filter(job_id__in=ids).values_list("node__name", flat=True)
    ) == set(NODES)
