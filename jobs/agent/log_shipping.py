"""The node agent's log shipping: each running attempt's output goes to the control plane
while the job runs, so any attempt's log can be read, and followed, whatever machine
ran it.

One shipper thread sends, every JOB_LOG_SHIP_INTERVAL_SECONDS, what every running
attempt printed since its last send, in one write. Whole lines wait for the next send;
a partial line waits for its end (up to LONG_LINE_BYTES). An attempt that ends is sent
at once, and its task thread waits for that, so its log is complete in the database
before its outcome is. An attempt's log is capped at JOB_LOG_SHIP_MAX_BYTES: past it,
its oldest chunks are deleted, so the tail is what is kept.

The write goes through a transport: the web API (`POST /api/agent/log-chunks/`), as
every other report of the agent; `LogShipper` does not care how chunks travel. A send
that fails is not retried on the spot: its chunks go again with the next send (unless
the server refused them: then they are dropped).
"""

import dataclasses
import logging
import threading
from collections import deque

from django.conf import settings

from .client import Refused, control_plane

logger = logging.getLogger(__name__)

# A line longer than this is sent in pieces rather than held until it ends.
LONG_LINE_BYTES = 64 * 1024
# What one request carries at most, well under the web's API_MAX_BODY_BYTES (1 MiB by
# default) once JSON has escaped it: output printed faster waits for the next request,
# which follows at once.
CHUNK_MAX_BYTES = 128 * 1024
SEND_MAX_BYTES = 384 * 1024


@dataclasses.dataclass(frozen=True)
class LogChunk:
    """A piece of an attempt's output (`jobs.services.logs.LogChunk` on the server)."""

    execution_id: int
    seq: int
    first_line: int
    offset: int
    text: str


class ApiLogTransport:
    """Sends chunks to the control plane's web API."""

    def send(self, chunks: list[LogChunk], cuts: dict[int, int]) -> None:
        control_plane().log_chunks(chunks=[dataclasses.asdict(c) for c in chunks], cuts=cuts)

    def idle(self) -> None:
        """Nothing is running: the keep-alive connection may stay open."""


def _char_start(data: bytes | bytearray, at: int) -> int:
    """`at`, moved back to the start of the UTF-8 character it falls inside."""
    for _ in range(3):
        if 0 < at < len(data) and data[at] & 0xC0 == 0x80:
            at -= 1
    return at


def _text(data: bytes) -> str:
    # PostgreSQL's text holds no NUL.
    return data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


class AttemptLog:
    """One attempt's output on its way: what is not sent yet, where it starts (line and
    byte), and the sizes of the chunks kept, for the cap."""

    def __init__(self, execution_id: int, max_bytes: int):
        self.execution_id = execution_id
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self.pending = bytearray()
        self.line = 1  # the number of pending's first line
        self.offset = 0  # bytes of output before pending
        self.seq = 0  # the next chunk's
        self.kept: deque[tuple[int, int]] = deque()  # (seq, bytes) of chunks sent and kept
        self.kept_bytes = 0
        self.cut_below = 0  # chunks below this seq are to be deleted
        self.closed = False
        self.sent_below = 0  # every chunk below this seq is stored
        self.shipped = threading.Event()

    def write(self, data: bytes) -> None:
        with self.lock:
            self.pending += data
            if len(self.pending) > self.max_bytes:
                self._drop_oldest_pending()

    def _drop_oldest_pending(self) -> None:
        """Output came faster than it is sent and passed the cap on its own: keep its
        last max_bytes (from a line's start where one is near), and cut every chunk."""
        at = len(self.pending) - self.max_bytes
        newline = self.pending.find(b"\n", at, at + LONG_LINE_BYTES)
        at = newline + 1 if newline >= 0 else _char_start(self.pending, at)
        self.line += self.pending.count(b"\n", 0, at)
        self.offset += at
        del self.pending[:at]
        self.cut_below = self.seq
        self.kept.clear()
        self.kept_bytes = 0

    def take(self) -> tuple[LogChunk | None, int]:
        """The next chunk to send, if any, and the seq below which chunks are cut."""
        with self.lock:
            if self.closed and len(self.pending) <= CHUNK_MAX_BYTES:
                end = len(self.pending)
            else:
                end = self.pending.rfind(b"\n", 0, CHUNK_MAX_BYTES) + 1
                if not end and (self.closed or len(self.pending) >= LONG_LINE_BYTES):
                    end = _char_start(self.pending, min(len(self.pending), CHUNK_MAX_BYTES))
            if not end:
                return None, self.cut_below
            piece = bytes(self.pending[:end])
            del self.pending[:end]
            chunk = LogChunk(self.execution_id, self.seq, self.line, self.offset, _text(piece))
            self.seq += 1
            self.line += piece.count(b"\n")
            self.offset += end
            self.kept.append((chunk.seq, end))
            self.kept_bytes += end
            while self.kept_bytes > self.max_bytes and len(self.kept) > 1:
                seq, size = self.kept.popleft()
                self.kept_bytes -= size
                self.cut_below = seq + 1
            return chunk, self.cut_below

    def has_pending(self) -> bool:
        with self.lock:
            return bool(self.pending)

    def settled(self) -> bool:
        """Closed, with every byte taken and stored."""
        with self.lock:
            return self.closed and not self.pending and self.sent_below == self.seq


class LogShipper:
    def __init__(self, transport):
        self.transport = transport
        self._lock = threading.Lock()
        self._logs: dict[int, AttemptLog] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        # Taken but not stored (the last send failed): sent again with the next.
        self._unsent: list[LogChunk] = []
        self._cuts_sent: dict[int, int] = {}

    def open(self, execution_id: int) -> AttemptLog:
        log = AttemptLog(execution_id, settings.JOB_LOG_SHIP_MAX_BYTES)
        with self._lock:
            self._logs[execution_id] = log
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._ship_forever, name="log-shipping", daemon=True
                )
                self._thread.start()
        return log

    def close(self, log: AttemptLog) -> bool:
        """The attempt has ended: send the rest now and wait until it is stored (at most
        JOB_LOG_SHIP_CLOSE_TIMEOUT_SECONDS; after that it is sent when it can be).
        Returns whether it was stored in time."""
        with log.lock:
            log.closed = True
        if log.settled():
            with self._lock:
                self._logs.pop(log.execution_id, None)
                self._cuts_sent.pop(log.execution_id, None)
            return True
        self._wake.set()
        stored = log.shipped.wait(settings.JOB_LOG_SHIP_CLOSE_TIMEOUT_SECONDS)
        if not stored:
            logger.warning(
                "log of execution not stored yet execution=%s; sending it later",
                log.execution_id,
            )
        return stored

    def _ship_forever(self) -> None:
        while True:
            self._wake.wait(settings.JOB_LOG_SHIP_INTERVAL_SECONDS)
            self._wake.clear()
            self.ship()
            with self._lock:
                idle = not self._logs and not self._unsent
            if idle:
                self.transport.idle()

    def ship(self) -> None:
        """Send what every open log has for sending, in one write."""
        with self._lock:
            logs = list(self._logs.values())
        if not logs and not self._unsent:
            return
        chunks, cuts = list(self._unsent), {}
        size = sum(len(c.text) for c in chunks)
        more = False
        for log in logs:
            if size >= SEND_MAX_BYTES:
                more = True
                break
            chunk, cut_below = log.take()
            if chunk is not None:
                chunks.append(chunk)
                size += len(chunk.text)
                more = more or log.has_pending()
            if cut_below > self._cuts_sent.get(log.execution_id, 0):
                cuts[log.execution_id] = cut_below
        taken = {c.execution_id: c.seq + 1 for c in chunks}  # in seq order per attempt
        chunks = [c for c in chunks if c.seq >= cuts.get(c.execution_id, 0)]
        if chunks or cuts:
            try:
                self.transport.send(chunks, cuts)
            except Refused as exc:
                # Sending them again would get the same answer: they are dropped, so the
                # output of the other attempts still goes.
                logger.warning("log chunks refused, dropped (%s)", exc)
            except Exception as exc:
                logger.warning("log shipping failed (%s); sending again with the next chunks", exc)
                self._unsent = chunks
                return
        self._unsent = []
        if more:  # what is left goes in the next request, at once
            self._wake.set()
        done = []
        for log in logs:
            with log.lock:
                log.sent_below = taken.get(log.execution_id, log.sent_below)
            if log.settled():
                done.append(log)
        with self._lock:
            self._cuts_sent.update({e: c for e, c in cuts.items() if e in self._logs})
            for log in done:
                self._logs.pop(log.execution_id, None)
                self._cuts_sent.pop(log.execution_id, None)
        for log in done:
            log.shipped.set()


shipper = LogShipper(ApiLogTransport())
