"""Logging in and out: a token stored per profile in the user's config directory."""

import click

from ..app import json_option
from ..client import Api
from ..config import DEFAULT_PROFILE, profile_remove, profile_store, server_for
from ..output import emit_json


@click.command()
@click.option("--url", envvar="SCHED_URL", prompt="Server URL", help="e.g. http://127.0.0.1:8000")
@click.option("--username", prompt=True)
@click.option("--password", prompt=True, hide_input=True, envvar="SCHED_PASSWORD")
@json_option
@click.pass_context
def login(ctx, url, username, password, as_json):
    """Log in and store the token under the profile (--profile, default "default") in
    $XDG_CONFIG_HOME/sched/config.json, readable only by you."""
    url = url.rstrip("/")
    api = Api(url)
    try:
        answer = api.post("auth/login/", json={"username": username, "password": password})
    finally:
        api.close()
    name = ctx.find_root().params.get("profile") or DEFAULT_PROFILE
    path = profile_store(name=name, url=url, token=answer["token"], username=username)
    if as_json:
        emit_json({"profile": name, "url": url, "username": username, "config": str(path)})
    else:
        click.echo(f"Logged in to {url} as {username} (profile {name}, token in {path})")


@click.command()
@json_option
@click.pass_context
def logout(ctx, as_json):
    """Revoke the profile's token on the server and forget it here."""
    name = ctx.find_root().params.get("profile") or DEFAULT_PROFILE
    server = server_for(name)
    api = Api(server.url, server.token)
    try:
        api.post("auth/logout/")
    finally:
        api.close()
    profile_remove(name=name)
    if as_json:
        emit_json({"profile": name, "logged_out": True})
    else:
        click.echo(f"Logged out (profile {name})")
