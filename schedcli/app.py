"""The `sched` command group: the options every command shares (`--profile`, `--json`)
and the one place where errors become messages and exit codes."""

import functools

import click

from .client import Api
from .config import server_for
from .errors import EXIT_INTERRUPTED, SchedError
from .output import report_error

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
