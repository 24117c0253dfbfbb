"""The usage report (like sreport): what your teams' jobs used over a span of days."""

import re
from datetime import UTC, date, datetime, timedelta

import click

from ..app import json_option, with_api
from ..output import emit_json, print_table

GROUPS = ("team", "queue", "user", "day")
FIGURES = (
    ("ATTEMPTS", "attempts"),
    ("OK", "succeeded"),
    ("RUN_H", "run_hours"),
    ("CPU_H", "cpu_hours"),
    ("MEM_GB_H", "memory_gb_hours"),
    ("GPU_H", "gpu_hours"),
)


def day(text: str | None, option: str) -> str | None:
    """`7d` (seven days before today, in UTC) or a date, as the API's YYYY-MM-DD."""
    if not text:
        return None
    days = re.fullmatch(r"(\d{1,4})d", text.strip())
    if days:
        return str(datetime.now(UTC).date() - timedelta(days=int(days.group(1))))
    try:
        return str(date.fromisoformat(text.strip()))
    except ValueError:
        message = f"{text!r}: use e.g. 7d or 2030-01-01"
        raise click.BadParameter(message, param_hint=option) from None


def groups(text: str) -> str:
    chosen = [group.strip() for group in text.split(",") if group.strip()]
    unknown = [group for group in chosen if group not in GROUPS]
    if unknown or not chosen:
        raise click.BadParameter(
            f"{text!r}: use one or more of {', '.join(GROUPS)}, comma-separated", param_hint="--by"
        )
    return ",".join(chosen)


def figures(row: dict) -> list[str]:
    return [
        str(row[key]) if key in ("attempts", "succeeded") else f"{row[key]:.3f}"
        for _, key in FIGURES
    ]


@click.command()
@click.option("--since", help="The first day: 7d (days ago) or 2030-01-01. Default 30 days ago.")
@click.option("--until", help="The day after the last: 2030-02-01. Default tomorrow (UTC).")
@click.option("--by", "by", default="team", show_default=True, help="team, queue, user, day.")
@click.option("--team", help="Only this team.")
@click.option("--queue", "queue_name", help="Only this queue.")
@click.option("--user", help="Only the jobs this user submitted.")
@json_option
@with_api
def report(api, since, until, by, team, queue_name, user, as_json):
    """What your teams' jobs used, by team, queue, user or day: attempts that ended, and
    the hours of run time, CPU cores, memory GiB and GPUs held while they ran (running
    attempts until now). Days are UTC."""
    answer = api.get(
        "usage/report/",
        since=day(since, "--since"),
        until=day(until, "--until"),
        by=groups(by),
        team=team,
        queue=queue_name,
        user=user,
    )
    if as_json:
        emit_json(answer)
        return
    keys = answer["by"]
    rows = [
        [str(row[key]) if row[key] is not None else "-" for key in keys] + figures(row)
        for row in answer["rows"]
    ]
    if len(rows) > 1:
        rows.append(["TOTAL"] + [""] * (len(keys) - 1) + figures(answer["total"]))
    click.echo(f"Usage from {answer['since']} to {answer['until']} (UTC, the last day excluded)")
    print_table([key.upper() for key in keys] + [name for name, _ in FIGURES], rows)
