"""Log shipping: an attempt's output reaches the database in numbered chunks of whole
lines while the job runs, several attempts in one write, its oldest part cut past the
cap with a marker saying what went, and expired chunks purged."""

import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from jobs.agent.log_shipping import (
    LONG_LINE_BYTES,
    ApiLogTransport,
    AttemptLog,
    LogChunk,
    LogShipper,
)
from jobs.agent.runner import TrackedExecution, run_job
from jobs.log_reading import attempt_log
from jobs.models import JobExecution, JobLogChunk
from jobs.tasks import purge_job_logs
from nodes.models import Node
from tests.jobs.agent.conftest import to_run
from tests.jobs.making import make_jobs, start_running
from tests.processes import wait_until


def test_whole_lines_are_taken_and_a_partial_line_waits_for_its_end():
    log = AttemptLog(execution_id=1, max_bytes=10_000)
    log.write(b"one\ntwo\nthr")
    chunk, cut = log.take()
    assert (chunk.seq, chunk.first_line, chunk.offset, chunk.text, cut) == (
        0,
        1,
        0,
        "one\ntwo\n",
        0,
    )
    assert log.take() == (None, 0)
    log.write(b"ee\nfour")
    chunk, _ = log.take()
    assert (chunk.seq, chunk.first_line, chunk.offset, chunk.text) == (1, 3, 8, "three\n")
    log.closed = True
    chunk, _ = log.take()
    assert (chunk.seq, chunk.first_line, chunk.offset, chunk.text) == (2, 4, 14, "four")


def test_a_line_too_long_to_wait_for_goes_in_pieces_cut_between_characters():
    log = AttemptLog(execution_id=1, max_bytes=10 * LONG_LINE_BYTES)
    log.write("é".encode() * LONG_LINE_BYTES)  # two bytes each
    chunk, _ = log.take()
    assert chunk.text == "é" * LONG_LINE_BYTES and chunk.first_line == 1


def test_past_the_cap_the_oldest_chunks_are_cut():
    log = AttemptLog(execution_id=1, max_bytes=10)
    for seq in range(4):
        log.write(b"abcd\n")
        chunk, cut = log.take()
        assert chunk.seq == seq
    # 20 bytes sent against a cap of 10: the two oldest chunks go.
    assert cut == 2 and log.kept_bytes == 10


def test_output_faster_than_shipping_keeps_its_last_bytes_from_a_line_start():
    log = AttemptLog(execution_id=1, max_bytes=10)
    log.write(b"abcd\n")
    log.take()
    log.write(b"1\n2\n3\n4\n5\n6\n7\n")
    chunk, cut = log.take()
    # 14 bytes waiting against a cap of 10: from the line after byte 4, so "1" to "3"
    # (lines 2 to 4 of the attempt, 6 bytes) are dropped, and the chunk already sent.
    assert (chunk.first_line, chunk.offset, chunk.text, cut) == (5, 11, "4\n5\n6\n7\n", 1)


@pytest.fixture
def running(transactional_db, team, settings, tmp_path):
    """Executions claimed on a node, run in this process as the agent would."""
    settings.NODE_WORK_DIR = tmp_path / "work"
    settings.JOB_LOG_DIR = tmp_path / "logs"
    node = Node.objects.create(name="node-a", cpu_millis=8000, memory_mb=8192)

    def running(*commands) -> list[JobExecution]:
        for command in commands:
            make_jobs(team, 1, command=command)
        tokens = start_running(node).values()
        return list(JobExecution.objects.filter(token__in=tokens).order_by("id"))

    return running


def run(execution):
    return run_job(
        execution=to_run(execution), node_name="node-a", tracked=TrackedExecution(execution.token)
    )


def test_a_running_jobs_lines_are_stored_before_it_ends_and_all_once_it_has(running, settings):
    settings.JOB_LOG_SHIP_INTERVAL_SECONDS = 0.1
    (execution,) = running(["sh", "-c", "echo first; sleep 2; echo second; printf third"])

    def run_and_disconnect():
        run(execution)
        connections.close_all()

    runner = threading.Thread(target=run_and_disconnect)
    runner.start()
    try:
        first = wait_until(
            lambda: JobLogChunk.objects.filter(execution=execution).first(), 10, message="a chunk"
        )
        assert (first.seq, first.first_line, first.offset, first.text) == (0, 1, 0, "first\n")
        assert runner.is_alive()  # stored while the job still ran
    finally:
        runner.join()
    chunks = list(JobLogChunk.objects.filter(execution=execution).values_list("first_line", "text"))
    assert chunks == [(1, "first\n"), (2, "second\nthird")]
    assert "".join(attempt_log(execution=execution)) == "first\nsecond\nthird"


class CountingTransport(ApiLogTransport):
    """The real transport, counting its writes."""

    def __init__(self):
        self.sends = []

    def send(self, chunks, cuts):
        self.sends.append(sorted({c.execution_id for c in chunks}))
        super().send(chunks, cuts)


def test_one_write_carries_the_output_of_every_running_attempt(running, settings):
    executions = running(["true"], ["true"], ["true"])
    shipper = LogShipper(CountingTransport())
    logs = [shipper.open(e.id) for e in executions]
    for i, log in enumerate(logs):
        log.write(f"attempt of {i}\n".encode())
    shipper.ship()
    assert shipper.transport.sends == [sorted(e.id for e in executions)]
    for i, execution in enumerate(executions):
        assert "".join(attempt_log(execution=execution)) == f"attempt of {i}\n"
    for log in logs:
        assert shipper.close(log)


def test_a_chunk_sent_again_is_stored_once_and_one_of_a_gone_attempt_is_dropped(running):
    (execution,) = running(["true"])
    gone = execution.id + 1000  # its job deleted while it ran
    chunks = [
        LogChunk(execution_id, 0, 1, 0, f"{execution_id}\n")
        for execution_id in (execution.id, gone)
    ]
    ApiLogTransport().send(chunks, {})
    ApiLogTransport().send(chunks[:1], {})  # its answer was lost
    assert list(JobLogChunk.objects.values_list("execution_id", "text")) == [
        (execution.id, f"{execution.id}\n")
    ]


def test_a_capped_attempt_keeps_its_tail_after_a_marker_saying_what_went(running, settings):
    settings.JOB_LOG_SHIP_MAX_BYTES = 1000
    settings.JOB_LOG_SHIP_INTERVAL_SECONDS = 0.05
    # 2,000 numbered lines of 7 bytes each, then a last one.
    script = "i=0; while [ $i -lt 2000 ]; do i=$((i+1)); printf 'l%05d\\n' $i; done; echo end"
    (execution,) = running(["sh", "-c", script])
    outcome = run(execution)
    assert outcome.exit_code == 0
    text = "".join(attempt_log(execution=execution))
    stored = sum(
        len(t)
        for t in JobLogChunk.objects.filter(execution=execution).values_list("text", flat=True)
    )
    # The cap, and at most one chunk (itself no larger than the cap) over it.
    assert stored <= 2 * 1000 + 7
    marker, _, rest = text.partition("]\n")
    kept = rest.splitlines()
    assert kept[-2:] == ["l02000", "end"]
    first_kept = int(kept[0][1:])
    dropped = first_kept - 1
    assert marker == f"[log cut: {dropped} lines ({dropped * 7} bytes) dropped" + (
        " to keep the attempt under its cap"
    )
    assert kept[:-1] == [f"l{i:05d}" for i in range(first_kept, 2001)]


def test_chunks_past_their_retention_are_purged(running, settings):
    settings.JOB_LOG_RETENTION_DAYS = 7
    old, new = running(["true"], ["true"])
    for execution in (old, new):
        JobLogChunk.objects.create(execution=execution, seq=0, first_line=1, offset=0, text="x\n")
    JobLogChunk.objects.filter(execution=old).update(created_at=timezone.now() - timedelta(days=8))
    assert purge_job_logs() == 1
    assert list(JobLogChunk.objects.values_list("execution_id", flat=True)) == [new.id]
