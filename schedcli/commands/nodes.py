"""Nodes: their state, capacity and what is allocated (like sinfo)."""

import click

from ..app import json_option, with_api
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
