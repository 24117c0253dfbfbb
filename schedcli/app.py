"""The `sched` command group: the options every command shares (`--profile`, `--json`)
and the one place where errors become messages and exit codes."""

import functools

import click

from .client import Api
from .config import server_for
from .errors import EXIT_INTERRUPTED, ApiRefused, SchedError
from .output import emit_json, report_error

JSON_KEY = "sched.json"


class SchedGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SchedError as error:
            report_error(error, as_json=ctx.meta.get(JSON_KEY, False))
            ctx.exit(error.exit_code)
        except KeyboardInterrupt:
            # As a shell reports an interrupted command; 1 would read as "refused".
            ctx.exit(EXIT_INTERRUPTED)


def _remember_json(ctx: click.Context, param, value: bool) -> bool:
    ctx.meta[JSON_KEY] = ctx.meta.get(JSON_KEY, False) or value
    return value


def json_option(command):
    """`--json` on a command: its answer (and an error) as JSON, for scripts."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        is_eager=True,
        expose_value=True,
        callback=_remember_json,
        help="Print JSON (the API's objects) instead of text.",
    )(command)


def api_for(ctx: click.Context) -> Api:
    root = ctx.find_root()
    if "sched.api" not in root.meta:
        server = server_for(root.params.get("profile"))
        api = Api(server.url, server.token)
        root.call_on_close(api.close)
        root.meta["sched.api"] = api
    return root.meta["sched.api"]


def with_api(command):
    """Passes the API client of the chosen profile as the first argument."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        return command(api_for(click.get_current_context()), *args, **kwargs)

    return wrapper


def act_on_each(items, act, *, noun: str, describe, as_json: bool) -> None:
    """`act(item)` for each item, in order. A refusal is reported with the item's noun
    and id (`job 12: ...`) and the rest are still done; the command then exits 1. The
    answers are printed as JSON, or each as `noun item: describe(answer)`."""
    done, refused = [], 0
    for item in items:
        try:
            done.append((item, act(item)))
        except ApiRefused as error:
            refused += 1
            error.message = f"{noun} {item}: {error.message}"
            report_error(error, as_json=as_json)
    if as_json:
        emit_json([answer for _, answer in done])
    else:
        for item, answer in done:
            click.echo(f"{noun} {item}: {describe(answer)}")
    if refused:
        raise click.exceptions.Exit(ApiRefused.exit_code)


def action_command(
    action: str, help: str, *, noun: str, path, describe, id_type=str, register=click.command
) -> click.Command:
    """`sched [GROUP] ACTION ID...`: POST `path(id)` for each id given (see
    `act_on_each`). `register` is the group's `command` for a subcommand."""

    @register(name=action, help=help)
    @click.argument("ids", type=id_type, nargs=-1, required=True, metavar=f"{noun.upper()}...")
    @json_option
    @with_api
    def command(api, ids, as_json):
        act_on_each(
            ids, lambda id_: api.post(path(id_)), noun=noun, describe=describe, as_json=as_json
        )

    return command
