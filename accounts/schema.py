"""How the OpenAPI schema describes `Authorization: Token <key>`."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": (
                "An API token, prefixed with `Token `: `Authorization: Token <key>`. "
                "Get one from `POST /api/auth/login/` or `POST /api/auth/tokens/`."
            ),
        }
