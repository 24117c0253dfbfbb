"""Hollow nodes (`run_node --hollow N`): N simulated nodes in one process, to size the
control plane with hundreds or thousands of nodes, not to run work. For tests and
benchmarks only; `run_node` refuses it unless HOLLOW_NODES_ALLOWED=true.

Each node registers, heartbeats (with its running tokens), asks which of its executions
to stop (when its stops queue nudges it, and every NODE_CANCEL_POLL_SECONDS), claims and
reports through the same web API as a real agent, with a key of its own
(`Authorization: Node <key>`). It "runs" an execution by waiting the seconds in
the job's `parameters.hollow_seconds` (default 1) and reports a success through the same
batched path (`/api/agent/successes/`), taking on the room it frees; it spawns no process.

A real agent costs a Celery worker, a broker connection and threads per node; here one
process carries them all: a broker connection for every NODES_PER_CONNECTION nodes
consumes their queues and stops queues (the router sends an execution to its node's
queue, `node.NAME`, and the queue a message came from says which node it is for), one
timer thread holds every due time (heartbeats, ends of executions), and a shared pool of
threads makes the HTTP calls over one keep-alive session, each with its node's key
(heartbeats on a few threads of their own).
"""

import heapq
import itertools
import logging
import math
import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests
from celery import current_app
from django.conf import settings
from kombu import Consumer, Queue
from requests.adapters import HTTPAdapter

from nodes.models import NODE_NAME_RE, node_queue_name, node_stops_queue_name

from .client import ControlPlane, Refused, Revoked, Stopped
from .runner import ExecutionToRun

logger = logging.getLogger(__name__)

DEFAULT_HOLLOW_SECONDS = 1.0
# Threads that only heartbeat, beside the --hollow-threads that make the other calls.
HEARTBEAT_THREADS = 8
# How long one drain of the broker connection waits before looking at the stop flag.
DRAIN_TIMEOUT_SECONDS = 1.0
# Nodes whose queues (and stops queues) share a broker connection. A Redis consumer asks
# again for every queue it consumes after each message (BRPOP on each queue's key, at
# each priority), so one connection for hundreds of nodes spent most of the process's
# time writing those commands, time the bench's control plane lost on the same cores.
NODES_PER_CONNECTION = 25


class HollowKeysError(Exception):
    """The key file is missing, readable by others, or lacks a node's key."""


def hollow_node_names(prefix: str, count: int) -> list[str]:
    """The names of `count` hollow nodes: PREFIX-1 to PREFIX-count."""
    return [f"{prefix}-{i}" for i in range(1, count + 1)]


def read_hollow_keys(path: str, names: list[str]) -> dict[str, str]:
    """Each node's key, from a file of `NAME KEY` lines (`issue_node_token PREFIX --count
    N` prints one); refused when others may read it, as `run_node` refuses NODE_KEY_FILE."""
    try:
        if os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise HollowKeysError(f"NODE_KEY_FILE {path} is readable by others; chmod 600 it.")
        with open(path) as file:
            lines = file.read().splitlines()
    except OSError as exc:
        raise HollowKeysError(f"NODE_KEY_FILE {path}: {exc.strerror}") from exc
    keys = {}
    for line in lines:
        name, _, key = line.strip().partition(" ")
        if name and key.strip():
            keys[name] = key.strip()
    missing = [name for name in names if name not in keys]
    if missing:
        raise HollowKeysError(
            f"NODE_KEY_FILE {path} has no key for {len(missing)} node(s), e.g. {missing[0]}; "
            "issue them with: manage.py issue_node_token PREFIX --count N"
        )
    return {name: keys[name] for name in names}


def hollow_seconds(parameters: dict) -> float | None:
    """How long a hollow node "runs" the job; None when the parameter is no duration."""
    value = parameters.get("hollow_seconds", DEFAULT_HOLLOW_SECONDS)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return float(value)


def logged(step: Callable, *args, **kwargs) -> None:
    """Run a step in the pool, logging what it raises: a future nobody reads would hide
    it, and a node whose heartbeat step died would be lost without a word."""
    try:
        step(*args, **kwargs)
    except Exception:
        logger.exception("hollow node step failed: %s", getattr(step, "__qualname__", step))


class _NodeSession:
    """The process's one keep-alive session, with one node's key on its requests."""

    def __init__(self, session: requests.Session, key: str):
        self._session = session
        self._headers = {"Authorization": f"Node {key}"}

    def post(self, url: str, **kwargs):
        return self._session.post(url, headers=self._headers, **kwargs)


class Timers:
    """One thread for every due time of the process: each callback is handed to a pool
    when due (the one given, else the shared one), so a slow HTTP call never delays
    another node's timer."""

    def __init__(self, pool: ThreadPoolExecutor):
        self._pool = pool
        self._heap: list[tuple[float, int, Callable[[], None], ThreadPoolExecutor]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="hollow-timers", daemon=True)
        self._thread.start()

    def call_later(
        self,
        delay: float,
        callback: Callable[[], None],
        pool: ThreadPoolExecutor | None = None,
    ) -> None:
        with self._changed:
            entry = (time.monotonic() + delay, next(self._order), callback, pool or self._pool)
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:
                self._changed.notify()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._stopped:
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    if wait is not None and wait <= 0:
                        break
                    self._changed.wait(wait)
                if self._stopped:
                    return
                _, _, callback, pool = heapq.heappop(self._heap)
            pool.submit(logged, callback)


@dataclass
class _Running:
    execution: ExecutionToRun
    ended: bool = False  # reported (or being reported): a cancel or its timer does nothing


class HollowNode:
    """One simulated node: its executions, its batch of successes, its heartbeats."""

    def __init__(self, name: str, control_plane: ControlPlane, fleet: "HollowFleet"):
        self.name = name
        self.control_plane = control_plane
        self.fleet = fleet
        self.lock = threading.Lock()
        self.running: dict[str, _Running | None] = {}  # None: claim in flight
        self.successes: list[str] = []
        self.reporting = False
        self.dead = False  # its key was refused: it does nothing more
        self.started = self.succeeded = 0

    # Executions.

    def receive(self, token: str) -> None:
        """A message on the node's queue: claim the execution and start "running" it."""
        with self.lock:
            if self.dead or token in self.running:
                return
            self.running[token] = None
        try:
            answer = self._call(self.control_plane.claim, token)
        except (Refused, requests.RequestException) as exc:
            logger.error("claim failed token=%s node=%s problem=%s", token, self.name, exc)
            answer = None
        if answer is None:
            self._forget(token)
            logger.debug("dropped duplicate or stale execution token=%s node=%s", token, self.name)
            return
        self.start(ExecutionToRun.of(answer))

    def start(self, execution: ExecutionToRun) -> None:
        """Run a claimed execution: wait its hollow seconds (or its timeout), then end it."""
        token = execution.token
        with self.lock:
            self.running[token] = _Running(execution)
            self.started += 1
        seconds = hollow_seconds(execution.parameters)
        timeout = execution.timeout_seconds
        if seconds is None:
            self.fleet.pool.submit(
                logged,
                self._end,
                token,
                exit_code=1,
                error="parameters.hollow_seconds must be a number of seconds, 0 or more",
            )
        elif timeout is not None and seconds > timeout:
            error = f"timed out after {timeout} s"
            self.fleet.timers.call_later(timeout, lambda: self._end(token, None, error))
        else:
            self.fleet.timers.call_later(seconds, lambda: self._succeed(token))

    def _succeed(self, token: str) -> None:
        with self.lock:
            entry = self.running.get(token)
            if entry is None or entry.ended:
                return
            entry.ended = True
            self.successes.append(token)
            if self.reporting:
                return
            self.reporting = True
        self._report_successes()

    def _report_successes(self) -> None:
        """Report every success gathered while the previous report was in flight, in one
        request; run what the server placed on the room they freed."""
        while True:
            with self.lock:
                batch, self.successes = self.successes, []
                if not batch or self.dead:
                    self.reporting = False
                    return
            fill = self.fleet.fill_freed_room
            try:
                answer = self._call(
                    self.control_plane.successes,
                    successes=[{"token": token} for token in batch],
                    claim=len(batch) if fill else 0,
                    fill_freed_room=fill,
                )
            except (Refused, requests.RequestException) as exc:
                logger.error("successes not reported node=%s problem=%s", self.name, exc)
                answer = None
            if answer is None:
                self._forget(*batch)
                continue
            ended = set(answer["ended"])
            with self.lock:
                self.succeeded += len(ended)
            for token in batch:
                if token not in ended:  # a cancel pending: finish says what was recorded
                    self._finish(token, exit_code=0, error="")
            self._forget(*batch)
            for item in answer["claimed"]:
                self.start(ExecutionToRun.of(item))

    def _end(
        self,
        token: str,
        exit_code: int | None,
        error: str,
        cancelled: bool = False,
        preempted: bool = False,
    ):
        with self.lock:
            entry = self.running.get(token)
            if entry is None or entry.ended:
                return
            entry.ended = True
        outcome = {"cancelled": cancelled} | ({"preempted": True} if preempted else {})
        self._finish(token, exit_code=exit_code, error=error, **outcome)
        self._forget(token)

    def _finish(self, token: str, **outcome) -> None:
        try:
            self._call(self.control_plane.finish, token=token, **outcome)
        except (Refused, requests.RequestException) as exc:
            logger.error("outcome not reported token=%s node=%s problem=%s", token, self.name, exc)

    def _forget(self, *tokens: str) -> None:
        with self.lock:
            for token in tokens:
                self.running.pop(token, None)

    def tokens(self) -> list[str]:
        with self.lock:
            return sorted(self.running)

    # The node's loop: heartbeats and cancels, each on its own timer.

    def heartbeat(self) -> None:
        try:
            self._call(
                self.control_plane.heartbeat,
                node_name=self.name,
                running_tokens=self.tokens(),
                used={"cpu": 0, "memory_mb": 0},
            )
        except (Refused, requests.RequestException) as exc:
            logger.warning("heartbeat failed node=%s problem=%s", self.name, type(exc).__name__)
        finally:
            self._again(settings.NODE_HEARTBEAT_SECONDS, self.heartbeat, self.fleet.beats)

    def apply_cancels(self) -> None:
        """The periodic check, for a nudge that was lost."""
        try:
            self.check_stops()
        finally:
            self._again(settings.NODE_CANCEL_POLL_SECONDS, self.apply_cancels)

    def check_stops(self) -> None:
        """Ask which executions to stop, and stop them."""
        try:
            tokens = self.tokens()
            asked = self._call(self.control_plane.stop_requests, tokens) if tokens else None
            if asked is not None:
                for token in asked.cancel:
                    self._end(token, None, "cancelled", cancelled=True)
                for request in asked.preempt:  # nothing to signal: it ends at once
                    by = request["preempted_by"]
                    self._end(request["token"], None, f"preempted by job {by}", preempted=True)
                self._forget(*asked.taken_away)  # failed over: nothing to report
        except (Refused, requests.RequestException) as exc:
            logger.warning("cancel check failed node=%s problem=%s", self.name, exc)

    def _again(
        self, delay: float, step: Callable[[], None], pool: ThreadPoolExecutor | None = None
    ) -> None:
        if not self.dead and not self.fleet.stopped.is_set():
            self.fleet.timers.call_later(delay, step, pool)

    def _call(self, call, *args, **kwargs):
        """A call to the control plane; None once the node is dead or the process stops."""
        try:
            return call(*args, **kwargs)
        except Revoked:
            with self.lock:
                self.dead, self.running = True, {}
            logger.error("the control plane refused the key of hollow node %s", self.name)
        except Stopped:
            pass
        return None


class _Consumer(threading.Thread):
    """One broker connection consuming the queues and stops queues of some of the fleet's
    nodes until the fleet stops consuming; it connects again when the connection drops."""

    def __init__(self, fleet: "HollowFleet", names: list[str]):
        super().__init__(name=f"hollow-consumer-{names[0]}", daemon=True)
        self.fleet = fleet
        self.queues = [current_app.amqp.queues.select_add(node_queue_name(n)) for n in names]
        self.queues += [Queue(node_stops_queue_name(n)) for n in names]
        self.connected = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._consume()
        except BaseException as exc:  # every consumer stops, and `consume` raises it
            self.error = exc
            self.fleet.consuming.clear()

    def _consume(self) -> None:
        fleet = self.fleet
        while fleet.consuming.is_set():
            connection = current_app.connection_for_read()
            try:
                with (
                    connection,
                    Consumer(
                        connection, queues=self.queues, callbacks=[fleet._received], accept=["json"]
                    ),
                ):
                    self.connected.set()
                    while fleet.consuming.is_set():
                        try:
                            connection.drain_events(timeout=DRAIN_TIMEOUT_SECONDS)
                        except TimeoutError:
                            continue
            except connection.connection_errors as exc:
                logger.warning("broker connection lost (%s); reconnecting", exc)
                time.sleep(1.0)


class HollowFleet:
    """Every hollow node of this process, their shared pool, timers and broker consumers."""

    def __init__(self, *, keys: dict[str, str], base_url: str, threads: int):
        self.stopped = threading.Event()  # calls to the control plane give up
        self.consuming = threading.Event()
        self.fill_freed_room = True
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hollow")
        # Heartbeats have threads of their own, as a real agent's loop is a thread of its
        # own: queued behind a busy control plane's claims and reports, they would come
        # late, and their nodes would be failed over as lost.
        self.beats = ThreadPoolExecutor(
            max_workers=HEARTBEAT_THREADS, thread_name_prefix="hollow-beat"
        )
        self.timers = Timers(self.pool)
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=threads + HEARTBEAT_THREADS)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.nodes: dict[str, HollowNode] = {}
        self.by_queue: dict[str, HollowNode] = {}
        self.stops_queues: dict[str, HollowNode] = {}
        for name, key in keys.items():
            control_plane = ControlPlane(base_url=base_url, key=key)
            control_plane.session = _NodeSession(self.session, key)
            control_plane.stopped = self.stopped
            self.nodes[name] = HollowNode(name, control_plane, self)

    def register(self, spec: dict) -> list[str]:
        """Register every node (in parallel); the problems of those that failed."""

        def register_one(node: HollowNode) -> str:
            try:
                node.control_plane.register({**spec, "name": node.name})
            except (Refused, Revoked, Stopped, requests.RequestException) as exc:
                return f"{node.name}: {str(exc) or type(exc).__name__}"
            return ""

        return [problem for problem in self.pool.map(register_one, self.nodes.values()) if problem]

    def start_loops(self) -> None:
        """Each node's heartbeats and cancel checks, spread over their intervals."""
        count = len(self.nodes)
        for i, node in enumerate(self.nodes.values()):
            share = i / count
            self.timers.call_later(
                settings.NODE_HEARTBEAT_SECONDS * share, node.heartbeat, self.beats
            )
            self.timers.call_later(settings.NODE_CANCEL_POLL_SECONDS * share, node.apply_cancels)

    def consume(self) -> None:
        """Consume every node's queue and stops queue until `stop_consuming`, over one
        broker connection for each NODES_PER_CONNECTION nodes, each on a thread of its
        own. A consumer that fails (other than by losing its connection, which it makes
        again) stops them all, and its error is raised here."""
        self.by_queue = {node_queue_name(name): node for name, node in self.nodes.items()}
        self.stops_queues = {node_stops_queue_name(name): node for name, node in self.nodes.items()}
        names = list(self.nodes)
        shards = [
            names[i : i + NODES_PER_CONNECTION] for i in range(0, len(names), NODES_PER_CONNECTION)
        ]
        self.consuming.set()
        consumers = [_Consumer(self, shard) for shard in shards]
        for consumer in consumers:
            consumer.start()
        for consumer in consumers:
            while self.consuming.is_set() and not consumer.connected.wait(DRAIN_TIMEOUT_SECONDS):
                continue
        if self.consuming.is_set():
            logger.info("hollow nodes consuming %s queues and their stops", len(names))
        for consumer in consumers:
            consumer.join()
        for consumer in consumers:
            if consumer.error is not None:
                raise consumer.error

    def stop_consuming(self) -> None:
        """Take no more messages (within DRAIN_TIMEOUT_SECONDS); what runs goes on."""
        self.consuming.clear()

    def _received(self, body, message) -> None:
        # Acknowledged on receipt, as the real agents' worker does: PostgreSQL knows what
        # ran, and reconciliation re-publishes an execution nobody claimed.
        message.ack()
        queue = message.delivery_info.get("routing_key", "")
        stopping = self.stops_queues.get(queue)
        if stopping is not None:
            self.pool.submit(logged, stopping.check_stops)
            return
        node = self.by_queue.get(queue)
        kwargs = body[1] if isinstance(body, list | tuple) and len(body) > 1 else {}
        token = kwargs.get("token") if isinstance(kwargs, dict) else None
        if node is None or not isinstance(token, str):
            logger.warning("dropped a message hollow nodes cannot run queue=%s", queue)
            return
        self.pool.submit(logged, node.receive, token)

    def idle(self) -> bool:
        return not any(node.running for node in self.nodes.values())

    def counts(self) -> tuple[int, int, int]:
        """Executions running now, started and succeeded since the start."""
        nodes = list(self.nodes.values())
        return (
            sum(len(node.running) for node in nodes),
            sum(node.started for node in nodes),
            sum(node.succeeded for node in nodes),
        )

    def stop(self) -> None:
        """Stop every loop; calls waiting for the server give up."""
        self.consuming.clear()
        self.stopped.set()
        self.timers.stop()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.beats.shutdown(wait=True, cancel_futures=True)


def valid_prefix(prefix: str, count: int) -> bool:
    """Whether PREFIX-1 to PREFIX-count are all valid node names."""
    return all(NODE_NAME_RE.match(name) for name in (f"{prefix}-1", f"{prefix}-{count}"))
