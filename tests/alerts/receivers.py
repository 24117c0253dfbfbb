"""Real receivers for alert notifications in tests: an HTTP server in a thread that
answers with the status codes it is told (or never answers), and an SMTP server
(aiosmtpd) that keeps the messages it gets."""

import json
import threading
from dataclasses import dataclass, field
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller

from alerts.sending import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature
from tests.processes import free_port


@dataclass
class Received:
    headers: dict
    body: bytes
    status: int | None

    @property
    def json(self) -> dict:
        return json.loads(self.body)

    def signed_with(self, secret: str) -> bool:
        expected = signature(
            secret=secret, timestamp=self.headers[TIMESTAMP_HEADER], body=self.body
        )
        return self.headers.get(SIGNATURE_HEADER) == expected


@dataclass
class WebhookReceiver:
    """Answers each POST with the next of `statuses` (the last one repeats); `hang` makes
    it hold every request without answering until it is closed."""

    statuses: list[int] = field(default_factory=lambda: [200])
    hang: bool = False
    requests: list[Received] = field(default_factory=list)
    waiting: int = 0  # requests held open now

    def __post_init__(self):
        self._lock = threading.Lock()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.hang:
                    with receiver._lock:
                        receiver.waiting += 1
                    receiver._release.wait()
                    return
                with receiver._lock:
                    n = len(receiver.requests)
                    code = receiver.statuses[min(n, len(receiver.statuses) - 1)]
                    receiver.requests.append(Received(dict(self.headers), body, code))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # `shutdown` waits for the loop's next poll: half a second by default, per test.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def of_kind(self, kind: str, rule_id: int | None = None) -> list[Received]:
        return [
            r
            for r in self.requests
            if r.status == 200
            and r.json["kind"] == kind
            and (rule_id is None or r.json["rule"]["id"] == rule_id)
        ]

    def close(self):
        self._release.set()
        self.server.shutdown()
        self.server.server_close()


class _Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


class SmtpReceiver:
    def __init__(self):
        self.inbox = _Inbox()
        self.port = free_port()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    @property
    def messages(self):
        return self.inbox.messages

    def close(self):
        self.controller.stop()


@pytest.fixture
def webhook():
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def smtp_server():
    receiver = SmtpReceiver()
    yield receiver
    receiver.close()
