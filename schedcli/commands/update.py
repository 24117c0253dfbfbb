"""Changing pending jobs (like scontrol update): the submit command's options for what a
job asks, sent as a PATCH of each job."""

import click

from ..app import json_option, with_api
from .jobs import act_on_jobs
from .submit import SPEC_OPTIONS, command_spec


@click.command()
@click.argument("job_ids", type=int, nargs=-1, required=True)
@click.option("--priority", type=int, help="Higher runs first (-1000 to 1000).")
@click.option("--cpus", help="CPU cores, e.g. 0.5.")
@click.option("--mem", help="Memory: 512, 512M, 2G.")
@click.option("--gpus", type=click.IntRange(min=0), help="GPUs.")
@click.option("--queue", "queue_name", help="Another queue (a job that has run keeps its own).")
@click.option("--retries", type=click.IntRange(min=0), help="Retries after a failed attempt.")
@click.option("--timeout", help="Wall-time limit: 90, 90s, 10m, 2h, 1d.")
@click.option("--cpu-time", help="CPU-time limit of each of its processes: 90, 10m, 2h.")
@click.option(
    "--select", multiple=True, metavar="K=V", help="Run on nodes with these labels (replaces)."
)
@click.option("--any-node", is_flag=True, help="Drop the node selector: any node will do.")
@json_option
@with_api
def update(api, job_ids, priority, any_node, as_json, **opts):
    """Change pending jobs (like scontrol update): what they ask, where, and in which
    order. Each keeps its place in its queue's order."""
    if any_node and opts["select"]:
        raise click.UsageError("Give --select or --any-node, not both.")
    change = command_spec({**dict.fromkeys(SPEC_OPTIONS), **opts}, team=None)
    if priority is not None:
        change["priority"] = priority
    if any_node:
        change["node_selector"] = {}
    if not change:
        raise click.UsageError(
            "Say what to change: --priority, --cpus, --mem, --gpus, --queue, --retries, "
            "--timeout, --cpu-time, --select or --any-node."
        )
    act_on_jobs(api, list(job_ids), "update", as_json=as_json, change=change)
