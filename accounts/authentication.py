"""`Authorization: Token <key>` authentication against hashed API tokens."""

from rest_framework import authentication, exceptions

from .services import api_token_verify


class ApiTokenAuthentication(authentication.TokenAuthentication):
    keyword = "Token"

    def authenticate_credentials(self, key):
        token = api_token_verify(key)
        if token is None or not token.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked token.")
        return (token.user, token)
