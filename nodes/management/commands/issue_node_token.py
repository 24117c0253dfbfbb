"""`manage.py issue_node_token NAME`: a credential for one node's agent, printed once.
With `--count N`, one for each of the nodes NAME-1 to NAME-N, printed as `NAME-i KEY`
lines: the key file of `run_node --name NAME --hollow N`."""

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from nodes.models import NODE_NAME_RE
from nodes.services import node_credential_issue, node_credentials_revoke


class Command(BaseCommand):
    help = (
        "Issue a credential with which the agent of node NAME may register and heartbeat "
        "through the API (Authorization: Node <key>). The key is printed once; only its "
        "digest is stored."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="Node name, e.g. node-a")
        parser.add_argument(
            "--revoke-existing",
            action="store_true",
            help="Revoke the node's earlier credentials first (rotation after a leak)",
        )
        parser.add_argument(
            "--count",
            type=int,
            help="Issue keys for nodes NAME-1 to NAME-N instead, printed as 'NAME-i KEY' lines "
            "(the key file of hollow nodes: run_node --name NAME --hollow N)",
        )

    def handle(self, *args, name, revoke_existing, count, **options):
        if count is not None:
            self.issue_many(prefix=name, count=count, revoke_existing=revoke_existing)
            return
        if not NODE_NAME_RE.match(name):
            raise CommandError("NAME must be lower-case letters, digits and dashes (max 63).")
        if revoke_existing:
            revoked = node_credentials_revoke(node_name=name)
            self.stderr.write(f"revoked {revoked} earlier credential(s) of node {name}")
        credential, key = node_credential_issue(node_name=name)
        self.stderr.write(
            f"credential {credential.prefix} for node {name}; this key is shown only once:"
        )
        self.stdout.write(key)

    def issue_many(self, *, prefix: str, count: int, revoke_existing: bool) -> None:
        names = [f"{prefix}-{i}" for i in range(1, count + 1)] if count > 0 else []
        if not names or not all(NODE_NAME_RE.match(n) for n in (names[0], names[-1])):
            raise CommandError(
                "--count must be at least 1, and NAME-N a valid node name (lower-case "
                "letters, digits and dashes, max 63)."
            )
        with transaction.atomic():
            revoked = sum(node_credentials_revoke(node_name=n) for n in names if revoke_existing)
            lines = [f"{n} {node_credential_issue(node_name=n)[1]}" for n in names]
        if revoke_existing:
            self.stderr.write(f"revoked {revoked} earlier credential(s) of nodes {prefix}-*")
        self.stderr.write(
            f"credentials for nodes {names[0]} to {names[-1]}; these keys are shown only once:"
        )
        self.stdout.write("\n".join(lines))
