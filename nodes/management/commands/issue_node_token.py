"""`manage.py issue_node_token NAME`: a credential for one node's agent, printed once."""

from django.core.management.base import BaseCommand, CommandError

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

    def handle(self, *args, name, revoke_existing, **options):
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
