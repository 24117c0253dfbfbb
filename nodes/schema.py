"""How the OpenAPI schema describes a node agent's `Authorization: Node <key>`."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class NodeCredentialScheme(OpenApiAuthenticationExtension):
    target_class = "nodes.authentication.NodeCredentialAuthentication"
    name = "nodeAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": (
                "A node agent's credential, prefixed with `Node `: `Authorization: Node <key>`. "
                "Only for registering a node and its heartbeats."
            ),
        }
