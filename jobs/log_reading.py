"""Reads of the logs node agents ship (`jobs.agent.log_shipping`): an attempt's log, whole
or followed while it runs, and the lines that contain a text, through the caller's
teams. The web process reads the database only, never a node's disk."""

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings

from accounts.models import Team, User
from accounts.selectors import team_list_visible
from resources.models import Queue

from .models import ExecutionStatus, JobExecution, JobLogChunk

# An attempt that may still print.
LIVE_EXECUTION_STATUSES = (ExecutionStatus.RESERVED, ExecutionStatus.RUNNING)
CHUNKS_PER_READ = 100
# A matching line is shown up to this many characters.
LINE_CHARS = 2000


def _cut_marker(lines: int, size: int) -> str:
    return f"[log cut: {lines} lines ({size} bytes) dropped to keep the attempt under its cap]\n"


def attempt_log(*, execution: JobExecution, follow: bool = False) -> Iterator[str]:
    """The attempt's log, chunk by chunk, with a line where its cap cut some; with
    `follow`, then what it prints until it ends (or JOB_LOG_FOLLOW_MAX_SECONDS pass).
    Where the database holds no chunk of the attempt, the tail its end recorded."""
    seq, line, offset, tail_newline, ended = -1, 1, 0, True, False
    give_up_at = time.monotonic() + settings.JOB_LOG_FOLLOW_MAX_SECONDS
    while True:
        chunks = list(
            JobLogChunk.objects.filter(execution=execution, seq__gt=seq)
            .order_by("seq")
            .values_list("seq", "first_line", "offset", "text")[:CHUNKS_PER_READ]
        )
        for _seq, first_line, chunk_offset, text in chunks:
            if chunk_offset > offset:
                yield ("" if tail_newline else "\n") + _cut_marker(
                    first_line - line, chunk_offset - offset
                )
            yield text
            line = first_line + text.count("\n")
            offset = chunk_offset + len(text.encode())
            tail_newline = text.endswith("\n")
        if chunks:
            seq = chunks[-1][0]
        if len(chunks) == CHUNKS_PER_READ:
            continue
        if not follow or ended or time.monotonic() > give_up_at:
            break
        # Read once more after the attempt is seen to end: its agent stores the rest of
        # its log before it reports the end.
        ended = not JobExecution.objects.filter(
            pk=execution.pk, status__in=LIVE_EXECUTION_STATUSES
        ).exists()
        if not ended:
            time.sleep(settings.JOB_LOG_FOLLOW_POLL_SECONDS)
    if seq < 0:
        # Nothing shipped (it ran before logs were): the tail its end recorded, if any.
        tail = JobExecution.objects.filter(pk=execution.pk).values_list("log_tail", flat=True)
        yield tail.first() or ""


@dataclass(frozen=True)
class LogSearch:
    text: str
    team: str | None = None
    queue: str | None = None
    definition: int | None = None
    job: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None  # the chunk the previous page ended with


@dataclass(frozen=True)
class LogLine:
    job: int
    attempt: int
    line: int
    text: str
    shipped_at: datetime


def log_chunks_matching(*, user: User, search: LogSearch):
    """The chunks that contain the text, newest first, of the caller's teams."""
    chunks = JobLogChunk.objects.filter(text__trigram_contains=search.text)
    if not user.is_staff:
        teams = list(team_list_visible(user=user).values_list("pk", flat=True))
        chunks = chunks.filter(execution__job__team_id__in=teams)
    if search.team is not None:
        team = Team.objects.filter(slug=search.team).values("pk")[:1]
        chunks = chunks.filter(execution__job__team_id=team)
    if search.queue is not None:
        queue = Queue.objects.filter(name=search.queue).values("pk")[:1]
        chunks = chunks.filter(execution__job__queue_id=queue)
    if search.definition is not None:
        chunks = chunks.filter(execution__job__definition_id=search.definition)
    if search.job is not None:
        chunks = chunks.filter(execution__job_id=search.job)
    if search.since is not None:
        chunks = chunks.filter(created_at__gte=search.since)
    if search.until is not None:
        chunks = chunks.filter(created_at__lt=search.until)
    if search.before is not None:
        chunks = chunks.filter(pk__lt=search.before)
    return chunks.order_by("-pk")


def log_line_search(
    *, user: User, search: LogSearch, limit: int
) -> tuple[list[LogLine], int | None]:
    """Up to about `limit` lines that contain the text (a chunk's lines are never split
    between pages), and the chunk to read the next page before, if there may be one."""
    rows = list(
        log_chunks_matching(user=user, search=search).values_list(
            "pk", "execution__job_id", "execution__attempt", "first_line", "text", "created_at"
        )[:limit]
    )
    wanted = search.text.lower()
    lines: list[LogLine] = []
    last = None
    for count, (pk, job, attempt, first_line, text, shipped_at) in enumerate(rows, 1):
        lines += [
            LogLine(job, attempt, first_line + i, line[:LINE_CHARS], shipped_at)
            for i, line in enumerate(text.split("\n"))
            if wanted in line.lower()
        ]
        last = pk
        if len(lines) >= limit and count < limit:
            return lines, pk
    return lines, last if last is not None and len(rows) == limit else None
