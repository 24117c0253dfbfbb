"""Workflows: submit a DAG of steps from a YAML (or JSON) file or from a stored
template; list them, show their steps, cancel and retry them."""

from pathlib import Path

import click

from .. import specs
from ..app import action_command, json_option, with_api
from ..client import Api
from ..errors import SchedError
from ..output import elapsed, emit_json, print_fields, print_table, short_time
from .jobs import MAX_PAGE

WORKFLOW_STATES = ("running", "succeeded", "failed", "cancelled")


@click.group()
def workflow():
    """Workflows: DAGs of steps."""


def print_steps(workflow: dict) -> None:
    print_table(
        ["STEP", "JOB", "AFTER", "STATE", "TIME"],
        [
            [
                step["name"],
                str(step["job"]),
                ",".join(step["depends_on"]),
                step["status"] + (f" ({step['pending_reason']})" if step["pending_reason"] else ""),
                elapsed(step["started_at"], step["finished_at"]) if step["started_at"] else "",
            ]
            for step in workflow["steps"]
        ],
    )


def print_workflow(workflow: dict, *, headline: str | None = None) -> None:
    if headline:
        click.echo(headline)
    else:
        print_fields(
            [
                ("id", workflow["id"]),
                ("name", workflow["name"]),
                ("team", workflow["team"]),
                ("state", workflow["status"]),
                ("parameters", ", ".join(f"{k}={v}" for k, v in workflow["parameters"].items())),
                ("max parallel", workflow["max_parallel"] or "no limit"),
                ("submitted", short_time(workflow["created_at"])),
                ("finished", short_time(workflow["finished_at"])),
            ]
        )
    print_steps(workflow)


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
    print_workflow(created, headline=f"Submitted workflow {created['id']} {created['name']}")


def template_id(api: Api, template: str, team: str | None) -> int:
    """A template's id from its id or its name (and team, if several teams use it)."""
    if template.isdigit():
        return int(template)
    found = api.get("workflow-templates/", name=template, team=team, page_size=2)["results"]
    if not found:
        where = f" in team {team}" if team else ""
        raise SchedError(f'No workflow template "{template}"{where}.')
    if len(found) > 1:
        raise SchedError(f'Several teams have a workflow template "{template}": give --team.')
    return found[0]["id"]


@workflow.command("run")
@click.argument("template")
@click.option("--team", help="The template's team (a slug), to find it by name.")
@click.option("--name", help="The workflow's name; default the template's.")
@click.option("--param", multiple=True, metavar="K=V", help="A parameter, over the template's.")
@json_option
@with_api
def workflow_run(api, template, team, name, param, as_json):
    """Submit a workflow from a stored template, given by id or name."""
    body = {"parameters": specs.key_values(param, "--param", typed=True)}
    if name:
        body["name"] = name
    created = api.post(f"workflow-templates/{template_id(api, template, team)}/submit/", json=body)
    if as_json:
        emit_json(created)
        return
    print_workflow(created, headline=f"Submitted workflow {created['id']} {created['name']}")


@workflow.command("templates")
@click.option("--team", help="Only this team's templates (a slug).")
@json_option
@with_api
def workflow_templates(api, team, as_json):
    """Your teams' workflow templates."""
    found = list(api.pages("workflow-templates/", team=team, page_size=MAX_PAGE))
    if as_json:
        emit_json(found)
        return
    print_table(
        ["ID", "NAME", "TEAM", "STEPS", "PARAMETERS"],
        [
            [
                str(template["id"]),
                template["name"],
                template["team"],
                str(len(template["steps"])),
                ", ".join(f"{k}={v}" for k, v in template["parameters"].items()),
            ]
            for template in found
        ],
    )


@workflow.command("list")
@click.option("--state", type=click.Choice(WORKFLOW_STATES), help="Only workflows in this state.")
@click.option("--team", help="Only this team's workflows (a slug).")
@click.option("--name", help="Only workflows with this name.")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_PAGE),
    default=50,
    show_default=True,
    help="The newest this many.",
)
@click.option("--all", "all_pages", is_flag=True, help="Every page, not the first.")
@json_option
@with_api
def workflow_list(api, state, team, name, limit, all_pages, as_json):
    """Your teams' workflows, newest first."""
    filters = {"status": state, "team": team, "name": name}
    if all_pages:
        found = list(api.pages("workflows/", **filters, page_size=MAX_PAGE))
    else:
        found = api.get("workflows/", **filters, page_size=limit)["results"]
    if as_json:
        emit_json(found)
        return
    print_table(
        ["ID", "NAME", "TEAM", "STATE", "STEPS", "SUBMITTED", "TIME"],
        [
            [
                str(flow["id"]),
                flow["name"],
                flow["team"],
                flow["status"],
                str(flow["step_count"]),
                short_time(flow["created_at"]),
                elapsed(flow["created_at"], flow["finished_at"]),
            ]
            for flow in found
        ],
    )


@workflow.command("show")
@click.argument("workflow_id", type=int)
@json_option
@with_api
def workflow_show(api, workflow_id, as_json):
    """One workflow: its state and each step's job and state."""
    found = api.get(f"workflows/{workflow_id}/")
    if as_json:
        emit_json(found)
    else:
        print_workflow(found)


def workflow_action_command(action: str, help: str) -> click.Command:
    return action_command(
        action,
        help,
        noun="workflow",
        id_type=int,
        path=lambda workflow_id: f"workflows/{workflow_id}/{action}/",
        describe=lambda flow: flow["status"],
        register=workflow.command,
    )


workflow_cancel = workflow_action_command("cancel", "Cancel every unfinished step.")
workflow_retry = workflow_action_command(
    "retry", "Run the failed and cancelled steps again, with everything downstream of them."
)
