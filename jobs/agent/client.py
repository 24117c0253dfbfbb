"""The node agent's only way to the control plane: the web API, with its node credential
(`Authorization: Node <key>`). The agent holds no database settings.

One `requests.Session` (a keep-alive pool as large as the agent's threads) carries every
call. A call that could not reach the server, or that the server could not answer
(connection refused or reset, a timeout, 502/503/504 from a proxy in front of a
restarting server), is sent again with exponential back-off until it is answered or the
agent stops: an outcome waits in the reporting thread, and the job's slot with it, until
the server is back, so none is lost. Only the first send of a claim can tell a lost
answer from a refusal; the sends after it ask to `resume` a claim of this node that the
server did record (and a batch of successes sent again has those recorded answered as
ended).

A 401 means the key was revoked (or replaced): the agent cannot act for its node any
more, and the control plane fails the node over as a lost one when its heartbeats stop.
The agent then stops (`on_revoked`) rather than run work it can no longer report.

The key is sent in a header and never logged.
"""

import logging
import threading
from dataclasses import dataclass

import requests
from requests.adapters import HTTPAdapter

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({502, 503, 504})
BACKOFF_FIRST_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 30.0


class Stopped(Exception):
    """The agent stopped while a call was waiting for the server."""


class Revoked(Exception):
    """The server refused the node's key (401): revoked or unknown."""


class Refused(Exception):
    """The server answered with an error that sending again would not change."""

    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status


@dataclass
class Answer:
    status: int
    body: dict | list | None


@dataclass
class StopRequests:
    cancel: list[str]  # someone asked to cancel their jobs
    preempt: list[dict]  # preempted by the scheduler: token, grace_seconds, preempted_by
    taken_away: list[str]  # failed over while the node was unreachable: run elsewhere


class ControlPlane:
    def __init__(self, *, base_url: str, key: str, pool_size: int = 16):
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(pool_size, 4))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["Authorization"] = f"Node {key}"
        self.stopped = threading.Event()
        self.revoked = threading.Event()
        self.on_revoked = None  # called once, from the first call that got a 401
        self._revoked_lock = threading.Lock()

    def __repr__(self) -> str:  # never the key
        return f"ControlPlane({self.base_url!r})"

    def post(self, path: str, body: dict, *, accept=(), retry: bool = True, on_retry=None):
        """POST `body`, sent again with back-off while the server cannot answer (unless
        `retry` is false: then one try, and a transport error raises). Returns the answer
        for a 2xx or a status in `accept`; raises Refused for any other status."""
        url = f"{self.base_url}{path}"
        delay = BACKOFF_FIRST_SECONDS
        tries = 0
        while True:
            if self.revoked.is_set():
                raise Revoked(path)
            tries += 1
            try:
                response = self.session.post(url, json=body, timeout=REQUEST_TIMEOUT_SECONDS)
            except requests.RequestException as exc:
                if not retry:
                    raise
                problem = type(exc).__name__
            else:
                if response.status_code == 401:
                    self._revoke()
                    raise Revoked(path)
                if response.status_code not in RETRY_STATUSES or not retry:
                    if response.ok or response.status_code in accept:
                        content = response.json() if response.content else None
                        return Answer(response.status_code, content)
                    raise Refused(response.status_code, response.text)
                problem = f"HTTP {response.status_code}"
            if tries == 1 or tries % 10 == 0:
                logger.warning(
                    "control plane unreachable path=%s problem=%s tries=%s; retrying",
                    path,
                    problem,
                    tries,
                )
            if on_retry is not None:
                body = on_retry(body)
            if self.stopped.wait(delay):
                raise Stopped(path)
            delay = min(delay * 2, BACKOFF_MAX_SECONDS)

    def _revoke(self) -> None:
        with self._revoked_lock:
            if self.revoked.is_set():
                return
            self.revoked.set()
        logger.error("the control plane refused this node's key (revoked?); stopping")
        if self.on_revoked is not None:
            self.on_revoked()

    def stop(self) -> None:
        """Calls waiting for the server give up (Stopped)."""
        self.stopped.set()

    # The calls of the agent, one per endpoint.

    def register(self, spec: dict) -> dict:
        return self.post("/api/nodes/register/", spec).body

    def heartbeat(
        self,
        *,
        node_name: str,
        running_tokens: list[str],
        used: dict,
        broker_reachable: bool = True,
    ) -> None:
        self.post(
            f"/api/nodes/{node_name}/heartbeat/",
            {"running_tokens": running_tokens, "used": used, "broker_reachable": broker_reachable},
            retry=False,
        )

    def claim(self, token: str) -> dict | None:
        """The execution to run, claimed for this node; None if it was not reserved for
        it (a duplicate or stale message)."""
        answer = self.post(
            "/api/agent/claim/", {"token": token}, accept=(404, 409), on_retry=_resumed
        )
        return answer.body if answer.status == 200 else None

    def finish(self, **outcome) -> str | None:
        """The status recorded; None when the outcome was ignored (the execution not
        running any more, or gone with its job)."""
        answer = self.post("/api/agent/finish/", outcome, accept=(404,))
        return answer.body["status"] if answer.status == 200 else None

    def successes(self, *, successes: list[dict], claim: int, fill_freed_room: bool) -> dict:
        return self.post(
            "/api/agent/successes/",
            {"successes": successes, "claim": claim, "fill_freed_room": fill_freed_room},
            on_retry=_resumed,
        ).body

    def stop_requests(self, tokens: list[str]) -> "StopRequests":
        """Which of these running executions to cancel, which to preempt, and which were
        taken away."""
        answer = self.post("/api/agent/cancel-requests/", {"tokens": tokens}, retry=False)
        return StopRequests(
            cancel=answer.body["tokens"],
            preempt=answer.body["preempt"],
            taken_away=answer.body["taken_away"],
        )

    def log_chunks(self, *, chunks: list[dict], cuts: dict[int, int]) -> None:
        self.post("/api/agent/log-chunks/", {"chunks": chunks, "cuts": cuts}, retry=False)


def _resumed(body: dict) -> dict:
    """A claim or a batch of successes sent again: its first send may have been recorded."""
    return {**body, "resume": True}


_control_plane: ControlPlane | None = None


def use_control_plane(control_plane: ControlPlane | None) -> None:
    global _control_plane
    _control_plane = control_plane


def control_plane() -> ControlPlane:
    """The agent's connection to the control plane, set by `run_node`."""
    if _control_plane is None:
        raise RuntimeError("no control plane: this process is no node agent")
    return _control_plane
