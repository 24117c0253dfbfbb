"""Schedules: list them, pause and resume them, preview their next runs."""

import click

from ..app import json_option, with_api
from ..output import emit_json, print_table, short_time


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def schedules(ctx, as_json):
    """Your teams' schedules (without a subcommand: the list)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(schedule_list, as_json=as_json)


@schedules.command("list")
@click.option("--team", help="Only this team's schedules (a slug).")
@json_option
@with_api
def schedule_list(api, as_json, team=None):
    """Every schedule, with what it runs and when it fires next."""
    found = list(api.pages("schedules/", team=team, page_size=500))
    if as_json:
        emit_json(found)
        return
    print_table(
        ["ID", "NAME", "TEAM", "ENABLED", "WHEN", "RUNS", "NEXT"],
        [
            [
                str(schedule["id"]),
                schedule["name"],
                schedule["team"],
                "yes" if schedule["enabled"] else "paused",
                schedule["description"],
                schedule["definition_name"] or "",
                short_time(schedule["next_fire_at"]),
            ]
            for schedule in found
        ],
    )


def change(api, schedule_id: int, action: str, as_json: bool) -> None:
    schedule = api.post(f"schedules/{schedule_id}/{action}/")
    if as_json:
        emit_json(schedule)
    else:
        state = "enabled" if schedule["enabled"] else "paused"
        click.echo(f"schedule {schedule['id']} {schedule['name']}: {state}")


@schedules.command()
@click.argument("schedule_id", type=int)
@json_option
@with_api
def pause(api, schedule_id, as_json):
    """Stop a schedule firing until it is resumed."""
    change(api, schedule_id, "pause", as_json)


@schedules.command()
@click.argument("schedule_id", type=int)
@json_option
@with_api
def resume(api, schedule_id, as_json):
    """Let a paused schedule fire again."""
    change(api, schedule_id, "resume", as_json)


@schedules.command("next")
@click.argument("schedule_id", type=int)
@click.option("--count", type=click.IntRange(1, 100), default=5, show_default=True)
@json_option
@with_api
def next_runs(api, schedule_id, count, as_json):
    """The next fire times of a schedule, in UTC and in its time zone."""
    answer = api.get(f"schedules/{schedule_id}/next_runs/", count=count)
    if as_json:
        emit_json(answer)
        return
    click.echo(answer["description"])
    print_table(
        ["UTC", answer["timezone"]], [[run["at"], run["local"]] for run in answer["next_runs"]]
    )
