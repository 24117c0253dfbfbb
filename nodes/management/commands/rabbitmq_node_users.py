"""`manage.py rabbitmq_node_users [NAME ...] [--apply]`: each node's own RabbitMQ user,
allowed only its queue, the events exchange and remote control (nodes/rabbitmq.py)."""

import secrets
import shlex
import subprocess

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from nodes.models import NODE_NAME_RE, Node
from nodes.rabbitmq import (
    broker_vhost,
    node_broker_permissions,
    node_broker_url,
    rabbitmqctl_add_user,
    rabbitmqctl_change_password,
    rabbitmqctl_set_permissions,
)


class Command(BaseCommand):
    help = (
        "Print (or, with --apply, run) the rabbitmqctl commands that give each node a "
        "RabbitMQ user of its own, `node.NAME`, allowed only its queue node.NAME, the "
        "events exchange and remote control, in the vhost of CELERY_BROKER_URL. Without "
        "NAME: every registered node. Printed, they are a shell script that, as --apply "
        "does, leaves an existing user's password as it is unless --password is given."
    )

    def add_arguments(self, parser):
        parser.add_argument("names", nargs="*", metavar="NAME", help="Node names, e.g. node-a")
        parser.add_argument(
            "--vhost", help="RabbitMQ vhost (default: the one in CELERY_BROKER_URL)"
        )
        parser.add_argument(
            "--password",
            help="The password to set (one node only); default: a new random one for a new "
            "user, and an existing user's unchanged",
        )
        parser.add_argument(
            "--apply",
            action="store_true",
            help="Run the commands with rabbitmqctl (on the broker's host, as a user allowed "
            "to) instead of printing them",
        )

    def handle(self, *args, names, vhost, password, apply, **options):
        names = names or list(Node.objects.order_by("name").values_list("name", flat=True))
        if not names:
            raise CommandError("No node registered yet: name the nodes.")
        bad = [name for name in names if not NODE_NAME_RE.match(name)]
        if bad:
            raise CommandError(f"Not node names (lower-case letters, digits, dashes): {bad}")
        if password and len(names) > 1:
            raise CommandError("--password sets one node's password: name one node.")
        vhost = vhost or broker_vhost(settings.CELERY_BROKER_URL)
        existing = self._existing_users() if apply else set()
        for name in names:
            permissions = node_broker_permissions(name)
            new_password = password
            if not apply:
                given = new_password is not None
                new_password = new_password or secrets.token_urlsafe(24)
                self.stdout.write(f"# node {name}")
                self.stdout.write(_user_script(permissions.user, new_password, change=given))
            elif permissions.user in existing:
                if new_password:
                    self._run(rabbitmqctl_change_password(permissions.user), stdin=new_password)
            else:
                new_password = new_password or secrets.token_urlsafe(24)
                self._run(rabbitmqctl_add_user(permissions.user), stdin=new_password)
            set_permissions = rabbitmqctl_set_permissions(vhost, permissions)
            if apply:
                self._run(set_permissions)
                self.stderr.write(f"node {name}: user {permissions.user} in vhost {vhost}")
            else:
                self.stdout.write(shlex.join(set_permissions))
            if new_password and settings.CELERY_BROKER_URL.startswith("amqp"):
                url = node_broker_url(
                    settings.CELERY_BROKER_URL, node_name=name, password=new_password
                )
                new_only = "" if apply or password else " (if its user was new)"
                self.stdout.write(f"# CELERY_BROKER_URL for node {name}{new_only}: {url}")

    def _existing_users(self) -> set[str]:
        listing = self._run(["rabbitmqctl", "-q", "list_users", "--no-table-headers"])
        return {line.split("\t", 1)[0] for line in listing.splitlines() if line.strip()}

    def _run(self, argv: list[str], stdin: str | None = None) -> str:
        try:
            result = subprocess.run(
                argv, input=stdin, capture_output=True, text=True, check=False, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CommandError(f"{argv[0]} {argv[1]}: {exc}") from exc
        if result.returncode != 0:
            raise CommandError(
                f"{shlex.join(argv[:3])} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result.stdout


def _user_script(user: str, password: str, *, change: bool) -> str:
    """Shell that adds the user with the password, as --apply does: a user that exists
    keeps its password, unless `change` (a --password given) sets it."""
    exists = (
        f"rabbitmqctl -q list_users --no-table-headers | cut -f1 | grep -qxF {shlex.quote(user)}"
    )
    feed = f"printf '%s' {shlex.quote(password)} | "
    add = feed + shlex.join(rabbitmqctl_add_user(user))
    if not change:
        return f"{exists} || {add}"
    return (
        f"if {exists}; then {feed}{shlex.join(rabbitmqctl_change_password(user))}; else {add}; fi"
    )
