"""Workflows: submit a DAG of steps from a YAML (or JSON) file."""

from pathlib import Path

import click

from .. import specs
from ..app import json_option, with_api
from ..output import emit_json, print_table


@click.group()
def workflow():
    """Workflows: DAGs of steps."""


@workflow.command("submit")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="The workflow's name, over the file's.")
@click.option("--team", help="The team (a slug), over the file's.")
@click.option("--param", multiple=True, metavar="K=V", help="A parameter, over the file's.")
@json_option
@with_api
def workflow_submit(api, path, name, team, param, as_json):
    """Submit the workflow FILE describes: the body of POST /api/workflows/ as YAML,
    with `name`, `parameters`, `max_parallel` and `steps`."""
    import yaml  # here, not at the top: the other commands start faster without it

    try:
        body = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise click.BadParameter(f"cannot read it: {error}", param_hint="FILE") from None
    if not isinstance(body, dict):
        raise click.BadParameter("its top level must be a mapping", param_hint="FILE")
    if name:
        body["name"] = name
    if team:
        body["team"] = team
    if param:
        body["parameters"] = {
            **(body.get("parameters") or {}),
            **specs.key_values(param, "--param", typed=True),
        }
    created = api.post("workflows/", json=body)
    if as_json:
        emit_json(created)
        return
    click.echo(f"Submitted workflow {created['id']} {created['name']}")
    print_table(
        ["STEP", "JOB", "AFTER", "STATE"],
        [
            [step["name"], str(step["job"]), ",".join(step["depends_on"]), step["status"]]
            for step in created["steps"]
        ],
    )
