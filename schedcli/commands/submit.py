"""Submitting a job (like sbatch): its options as the API's fields, and --wait."""

import time

import click

from .. import specs
from ..app import json_option, with_api
from ..client import Api
from ..errors import EXIT_JOB_FAILED, SchedError
from ..output import emit_json
from .jobs import FINISHED


def definition_id(api: Api, name: str, team: str | None) -> int:
    if name.isdecimal():
        return int(name)
    found = api.get("definitions/", name=name, team=team, page_size=2)["results"]
    if len(found) != 1:
        where = f" in team {team}" if team else ""
        problem = "No definition" if not found else "Several definitions (give --team)"
        raise SchedError(f"{problem} named {name!r}{where}.")
    return found[0]["id"]


def wait_for_end(api: Api, job_id: int) -> dict:
    pause = 0.2
    while True:
        job = api.get(f"jobs/{job_id}/")
        if job["status"] in FINISHED:
            return job
        time.sleep(pause)
        pause = min(pause * 1.5, 1.0)


def waited_exit_code(job: dict) -> int:
    """As sbatch --wait: 0 for a success, the job's exit code when it failed with one
    (1 to 255); 3 for a job that ended otherwise (cancelled, timed out, killed by a
    signal, lost with its node, an array with failed tasks)."""
    if job["status"] == "succeeded":
        return 0
    code = job["exit_code"]
    if job["status"] == "failed" and code is not None and 0 < code <= 255:
        return code
    return EXIT_JOB_FAILED


SPEC_OPTIONS = (
    "cpus",
    "mem",
    "gpus",
    "tasks",
    "preemptible",
    "queue_name",
    "retries",
    "timeout",
    "cpu_time",
    "select",
    "after",
    "hold",
)


@click.command(context_settings={"allow_interspersed_args": False})
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--name", help="The job's name; default the command's.")
@click.option("--team", help="The team (a slug); needed when you are in several.")
@click.option("--cpus", help="CPU cores, e.g. 0.5 (default 1).")
@click.option("--mem", help="Memory: 512, 512M, 2G (default 256M).")
@click.option("--gpus", type=click.IntRange(min=0), help="GPUs (default 0).")
@click.option(
    "--tasks",
    type=click.IntRange(min=1),
    help="A gang of N tasks, each with these resources, started together or not at all.",
)
@click.option("--queue", "queue_name", help="The queue (default: default).")
@click.option("--priority", type=int, help="Higher runs first (-1000 to 1000).")
@click.option(
    "--preemptible/--not-preemptible",
    default=None,
    help="May higher-priority work stop it and run it again later? (default: the queue's).",
)
@click.option("--retries", type=click.IntRange(min=0), help="Retries after a failed attempt.")
@click.option("--timeout", help="Wall-time limit: 90, 90s, 10m, 2h, 1d.")
@click.option("--cpu-time", help="CPU-time limit of each of its processes: 90, 10m, 2h.")
@click.option("--env", "env_pairs", multiple=True, metavar="K=V", help="Environment variable.")
@click.option("--select", multiple=True, metavar="K=V", help="Run on nodes with this label.")
@click.option(
    "--after", multiple=True, metavar="JOB[:ok|notok|any|start]", help="Start after a job."
)
@click.option("--array", "array_spec", metavar="0-N[%P]", help="N+1 tasks, at most P at once.")
@click.option("--definition", help="Submit from this definition (a name or an id).")
@click.option("--callable", "callable_name", help="Run this allowed Python callable.")
@click.option("--param", multiple=True, metavar="K=V", help="Parameter (JSON value or text).")
@click.option("--idempotency-key", help="Resubmitting with the same key returns the first job.")
@click.option("--hold", is_flag=True, default=None, help="Submit it held: it starts once released.")
@click.option("--wait", is_flag=True, help="Wait for the job to end; exit with its exit code.")
@click.option("--parsable", is_flag=True, help="Print only the job's id.")
@json_option
@with_api
def submit(api, command, name, team, definition, callable_name, wait, parsable, as_json, **opts):
    """Submit a job (like sbatch): sched submit [OPTIONS] -- COMMAND ARGS..."""
    spec = job_spec(api, command, name, team, definition, callable_name, opts)
    job = api.post("jobs/", json=spec)
    if parsable:
        click.echo(job["id"])
    elif not as_json:
        click.echo(f"Submitted job {job['id']}")
    if not wait:
        if as_json:
            emit_json(job)
        return
    job = wait_for_end(api, job["id"])
    if as_json:
        emit_json(job)
    elif not parsable:
        ending = "" if job["exit_code"] is None else f" (exit code {job['exit_code']})"
        click.echo(f"job {job['id']} {job['status']}{ending}")
    click.get_current_context().exit(waited_exit_code(job))


def job_spec(api, command, name, team, definition, callable_name, opts) -> dict:
    params = specs.key_values(opts["param"], "--param", typed=True)
    env = specs.key_values(opts["env_pairs"], "--env")
    if definition is not None:
        given = [option for option in SPEC_OPTIONS if opts[option] not in (None, ())]
        if command or callable_name or given:
            shown = ", ".join(f"--{o.removesuffix('_name').replace('_', '-')}" for o in given)
            raise click.UsageError(
                "With --definition the command and resources come from it; give only "
                "--name, --env, --param, --priority, --array, --idempotency-key. "
                f"({shown or 'command'})"
            )
        spec = {"definition": definition_id(api, definition, team)}
    else:
        if callable_name is not None:
            if command:
                raise click.UsageError("Give --callable or a command, not both.")
            spec = {"kind": "callable", "callable": callable_name, "name": callable_name}
        elif command:
            spec = {"command": list(command), "name": command[0].rsplit("/", 1)[-1]}
        else:
            raise click.UsageError("Give a command after --, a --definition or a --callable.")
        spec |= command_spec(opts, team)
    if name is not None:
        spec["name"] = name
    if env:
        spec["env"] = env
    if params:
        spec["parameters"] = params
    if opts["priority"] is not None:
        spec["priority"] = opts["priority"]
    if opts["array_spec"]:
        spec["array"] = specs.array(opts["array_spec"])
    if opts["idempotency_key"]:
        spec["idempotency_key"] = opts["idempotency_key"]
    return spec


def command_spec(opts: dict, team: str | None) -> dict:
    """The fields a command or a callable job carries itself (a definition holds its own)."""
    spec = {}
    if team:
        spec["team"] = team
    resources = {}
    if opts["cpus"] is not None:
        resources["cpu"] = specs.cpus(opts["cpus"])
    if opts["mem"] is not None:
        resources["memory_mb"] = specs.memory_mb(opts["mem"])
    if opts["gpus"] is not None:
        resources["gpu"] = opts["gpus"]
    if resources:
        spec["resources"] = resources
    if opts["tasks"] is not None:
        spec["tasks"] = opts["tasks"]
    if opts["preemptible"] is not None:
        spec["preemptible"] = opts["preemptible"]
    if opts["queue_name"]:
        spec["queue"] = opts["queue_name"]
    if opts["retries"] is not None:
        spec["max_retries"] = opts["retries"]
    if opts["timeout"]:
        spec["timeout_seconds"] = specs.seconds(opts["timeout"], "--timeout")
    if opts["cpu_time"]:
        spec["cpu_time_limit_seconds"] = specs.seconds(opts["cpu_time"], "--cpu-time")
    if opts["select"]:
        spec["node_selector"] = specs.key_values(opts["select"], "--select")
    if opts["after"]:
        spec["depends_on"] = specs.dependencies(opts["after"])
    if opts["hold"]:
        spec["hold"] = True
    return spec
