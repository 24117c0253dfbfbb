"""Nodes: their state, capacity and what is allocated (like sinfo); cordon, drain and
uncordon them (like kubectl's commands of those names, or scontrol's node states)."""

from urllib.parse import quote

import click

from ..app import action_command, json_option, with_api
from ..output import emit_json, print_table, short_time

NODE_STATES = ("ready", "cordoned", "draining", "offline")


def amounts(node: dict, resource: str, unit: str = "") -> str:
    return f"{node['allocated'][resource]:g}/{node['capacity'][resource]:g}{unit}"


@click.command()
@click.option("--state", type=click.Choice(NODE_STATES), help="Only nodes in this state.")
@json_option
@with_api
def nodes(api, state, as_json):
    """Nodes with their state, allocated/total CPU, memory and GPU, and labels."""
    found = list(api.pages("nodes/", status=state, page_size=500))
    if as_json:
        emit_json(found)
        return
    print_table(
        ["NODE", "STATE", "CPU", "MEMORY", "GPU", "LABELS", "HEARTBEAT"],
        [
            [
                node["name"],
                node["status"],
                amounts(node, "cpu"),
                amounts(node, "memory_mb", "M"),
                amounts(node, "gpu"),
                ",".join(f"{k}={v}" for k, v in sorted(node["labels"].items())),
                short_time(node["last_heartbeat"]),
            ]
            for node in found
        ],
    )


def describe_state(node: dict) -> str:
    if node["status"] == "draining":  # only while work runs there: else it is cordoned
        return "draining (cordoned once what runs there has finished)"
    return node["status"]


def node_action_command(action: str, help: str) -> click.Command:
    return action_command(
        action,
        help,
        noun="node",
        path=lambda name: f"nodes/{quote(name, safe='')}/{action}/",
        describe=describe_state,
    )


cordon = node_action_command(
    "cordon", "Take no new work on these nodes; what runs there carries on (staff only)."
)
drain = node_action_command(
    "drain",
    "Take no new work on these nodes, and cordon each once what runs there has finished "
    "(staff only).",
)
uncordon = node_action_command(
    "uncordon", "Let cordoned or draining nodes take new work again (staff only)."
)
