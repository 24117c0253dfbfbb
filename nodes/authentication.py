"""`Authorization: Node <key>`: a node agent's own credential, for registration and
heartbeats only."""

from rest_framework import authentication, exceptions
from rest_framework.permissions import BasePermission

from .models import NodeCredential
from .services import node_credential_verify


class NodeCredentialAuthentication(authentication.TokenAuthentication):
    keyword = "Node"

    def authenticate_credentials(self, key):
        credential = node_credential_verify(key)
        if credential is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked node credential.")
        # A node is no user: request.user stays None and request.auth is the credential.
        return (None, credential)


class IsNodeAgent(BasePermission):
    def has_permission(self, request, view):
        return isinstance(request.auth, NodeCredential)
