"""How `sched` writes: JSON for scripts (`--json`), Rich tables and lines for people,
errors on stderr with the API's field messages."""

import json
import sys
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from .errors import SchedError


def console(*, stderr: bool = False) -> Console:
    # Piped output is not cut to 80 columns: a script reading a table gets whole rows.
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 1000
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


def emit_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False) + "\n")


def print_table(columns: list[str], rows: list[list[str]]) -> None:
    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    out = console()
    with out.capture() as captured:
        out.print(table)
    # Rich pads the last column too; lines end at their last character.
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def print_fields(pairs: list[tuple[str, object]]) -> None:
    out = console()
    width = max(len(key) for key, _ in pairs)
    for key, value in pairs:
        out.print(f"[bold]{key.ljust(width)}[/bold]  {'' if value is None else value}")


def field_messages(detail, prefix: str = "") -> list[str]:
    """The API's error answer as lines: `field: message`, nested fields dotted."""
    if isinstance(detail, dict):
        lines = []
        for key, value in detail.items():
            name = "" if key in ("detail", "non_field_errors") else key
            lines += field_messages(
                value, f"{prefix}.{name}" if prefix and name else prefix or name
            )
        return lines
    if isinstance(detail, list):
        if all(isinstance(item, str) for item in detail):
            return [f"{prefix}: {item}" if prefix else item for item in detail]
        lines = []
        for index, item in enumerate(detail):
            lines += field_messages(item, f"{prefix}[{index}]")
        return lines
    text = str(detail).strip()
    return [f"{prefix}: {text}" if prefix else text] if text else []


def report_error(error: SchedError, *, as_json: bool) -> None:
    if as_json:
        body = {"error": error.message, "exit_code": error.exit_code}
        if error.detail is not None:
            body["detail"] = error.detail
        sys.stderr.write(json.dumps(body) + "\n")
        return
    err = console(stderr=True)
    messages = field_messages(error.detail) if error.detail is not None else []
    err.print(f"[red]error:[/red] {error.message}", markup=True)
    for line in messages:
        err.print(f"  {line}", markup=False)


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def duration(seconds: float | None) -> str:
    """Like squeue's TIME: M:SS, H:MM:SS, D-HH:MM:SS."""
    if seconds is None:
        return ""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02}:{minutes:02}:{secs:02}"
    if hours:
        return f"{hours}:{minutes:02}:{secs:02}"
    return f"{minutes}:{secs:02}"


def elapsed(start: str | None, end: str | None = None) -> str:
    began = parse_time(start)
    if began is None:
        return "0:00"
    ended = parse_time(end) or datetime.now(UTC)
    return duration((ended - began).total_seconds())


def short_time(text: str | None) -> str:
    when = parse_time(text)
    return "" if when is None else when.astimezone().strftime("%Y-%m-%d %H:%M:%S")
